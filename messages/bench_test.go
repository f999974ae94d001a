package messages

import "testing"

var benchBody = []byte(`{"requestId":"order-4711-nightly","executable":"5f0c1e3a9b","kind":"task","logLevel":"WARN","timeout":60,` +
	`"parameters":[{"name":"basic_password","value":"x","encrypted":true},{"name":"region","value":"eu"},{"name":"day","value":"2026-12-04"}],` +
	`"awaitResult":true,"onUnknown":"report","notBefore":"2026-12-04T10:00:00Z","expiresAt":"2026-12-04T12:00:00Z","metadata":{"origin":"billing"}}`)

func BenchmarkDecode(b *testing.B) {
	src := Source{Subject: "tmc.runs.request.billing", MsgID: "order-4711-nightly", FallbackID: "s1733300000000-42"}
	d := Decoder{}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		if _, err := d.Decode(benchBody, src); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	ev := goldenEvents()["result"]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ev.Marshal(); err != nil {
			b.Fatal(err)
		}
		_ = ev.Header("")
	}
}
