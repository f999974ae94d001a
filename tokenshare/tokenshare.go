// Package tokenshare lets every replica of the fleet use one Talend token:
// one refresh per token lifetime for the whole fleet instead of one per
// replica.
//
// The current token sits in a JetStream KeyValue bucket, encrypted with
// AES-GCM under a key derived (HKDF-SHA-256) from the service account's
// client secret, so that read access to NATS alone does not reveal a
// Talend token. One replica at a time fetches a new token, under a lease
// key in the same bucket; the others wait for the new value and fall back
// to fetching themselves if the lease holder dies. A 401 invalidates,
// fleet-wide, only the token that failed.
//
// A *Shared is safe for concurrent use; each process's talend.TokenCache
// still keeps one fetch in flight at a time in front of it.
package tokenshare

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/talend"
)

const (
	tokenKey = "token"
	leaseKey = "token.lease"
)

// Shared is the fleet-wide token store.
type Shared struct {
	kv       jetstream.KeyValue
	holder   string
	creds    talend.CredentialsFunc
	leaseTTL time.Duration
	margin   time.Duration
	now      func() time.Time
}

// Options configure a Shared store.
type Options struct {
	Holder string // this replica's name in the lease
	// Credentials supply the secret the encryption key is derived from
	// (re-read each time: a rotated secret re-keys the store).
	Credentials talend.CredentialsFunc
	// LeaseTTL: a refreshing replica silent this long is taken for dead
	// (default 30s — far longer than a token request or scheduling jitter).
	LeaseTTL time.Duration
	// Margin: a stored token this close to expiry is not handed out
	// (default 2m).
	Margin time.Duration
	Now    func() time.Time
}

// New returns a store on kv (the tmc_tokens bucket).
func New(kv jetstream.KeyValue, opts Options) *Shared {
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 30 * time.Second
	}
	if opts.Margin <= 0 {
		opts.Margin = 2 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Shared{kv: kv, holder: opts.Holder, creds: opts.Credentials, leaseTTL: opts.LeaseTTL, margin: opts.Margin, now: opts.Now}
}

type stored struct {
	Value  string `json:"v"`
	Expiry int64  `json:"e"` // unix ms
	// Life is the token's whole lifetime, so that a reader can tell when
	// the fleet should refresh it.
	Life int64 `json:"l"`
}

type leaseValue struct {
	Holder  string `json:"holder"`
	Expires int64  `json:"expires"`
}

// Fetch returns the fleet's current token if it is fresh enough, else
// makes sure exactly one replica fetches a new one with local and shares
// it. refreshBefore is how long before expiry the fleet wants a new token.
func (s *Shared) Fetch(ctx context.Context, local talend.TokenFetcher, refreshBefore time.Duration) (talend.Token, error) {
	for attempt := 0; ; attempt++ {
		tok, life, rev, err := s.current(ctx)
		if err != nil {
			// The store is unreadable (NATS trouble): do not stop working.
			return local(ctx)
		}
		now := s.now()
		ahead := min(refreshBefore, life/3)
		if tok.Value != "" && now.Before(tok.Expiry.Add(-ahead)) {
			return tok, nil
		}
		// Stale or missing: one replica refreshes.
		leaseRev, mine := s.takeLease(ctx)
		if mine {
			// Look again under the lease: another replica may have
			// refreshed between our read and our taking the lease.
			if again, againLife, _, err := s.current(ctx); err == nil && again.Value != "" && again.Value != tok.Value &&
				s.now().Before(again.Expiry.Add(-min(refreshBefore, againLife/3))) {
				s.releaseLease(ctx, leaseRev)
				return again, nil
			}
			fresh, err := local(ctx)
			if err == nil {
				s.store(ctx, fresh, rev)
			}
			s.releaseLease(ctx, leaseRev)
			return fresh, err
		}
		// Someone else is refreshing: wait for their value, then look again.
		if tok.Value != "" && now.Before(tok.Expiry.Add(-min(s.margin, life/10))) {
			return tok, nil // still usable meanwhile
		}
		if attempt >= int(s.leaseTTL/(250*time.Millisecond))+1 {
			return local(ctx) // the holder seems stuck: fetch ourselves
		}
		select {
		case <-ctx.Done():
			return talend.Token{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Invalidate removes tok from the store if it is still the shared token
// (compare-and-delete): another replica's newer token is kept.
func (s *Shared) Invalidate(ctx context.Context, tok talend.Token) {
	cur, _, rev, err := s.current(ctx)
	if err != nil || cur.Value != tok.Value || rev == 0 {
		return
	}
	_ = s.kv.Delete(ctx, tokenKey, jetstream.LastRevision(rev))
}

// current reads and decrypts the stored token; zero Token when there is
// none or it cannot be decrypted (e.g. after a secret rotation).
func (s *Shared) current(ctx context.Context) (talend.Token, time.Duration, uint64, error) {
	entry, err := s.kv.Get(ctx, tokenKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return talend.Token{}, 0, 0, nil
	}
	if err != nil {
		return talend.Token{}, 0, 0, fmt.Errorf("read shared token: %w", err)
	}
	plain, err := s.decrypt(entry.Value())
	if err != nil {
		return talend.Token{}, 0, entry.Revision(), nil
	}
	var st stored
	if json.Unmarshal(plain, &st) != nil {
		return talend.Token{}, 0, entry.Revision(), nil
	}
	return talend.Token{Value: st.Value, Expiry: time.UnixMilli(st.Expiry)}, time.Duration(st.Life) * time.Millisecond, entry.Revision(), nil
}

func (s *Shared) store(ctx context.Context, tok talend.Token, _ uint64) {
	st := stored{Value: tok.Value, Expiry: tok.Expiry.UnixMilli(), Life: tok.Expiry.Sub(s.now()).Milliseconds()}
	plain, _ := json.Marshal(st)
	sealed, err := s.encrypt(plain)
	if err != nil {
		return
	}
	_, _ = s.kv.Put(ctx, tokenKey, sealed)
}

func (s *Shared) takeLease(ctx context.Context) (uint64, bool) {
	now := s.now()
	value, _ := json.Marshal(leaseValue{Holder: s.holder, Expires: now.Add(s.leaseTTL).UnixMilli()})
	rev, err := s.kv.Create(ctx, leaseKey, value)
	if err == nil {
		return rev, true
	}
	entry, gerr := s.kv.Get(ctx, leaseKey)
	if gerr != nil {
		if errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted) {
			rev, err := s.kv.Create(ctx, leaseKey, value)
			return rev, err == nil
		}
		return 0, false
	}
	var cur leaseValue
	if json.Unmarshal(entry.Value(), &cur) == nil && now.Before(time.UnixMilli(cur.Expires)) {
		return 0, false
	}
	// The holder died mid-refresh: take over.
	rev, err = s.kv.Update(ctx, leaseKey, value, entry.Revision())
	return rev, err == nil
}

func (s *Shared) releaseLease(ctx context.Context, rev uint64) {
	_ = s.kv.Delete(context.WithoutCancel(ctx), leaseKey, jetstream.LastRevision(rev))
}

// cipher derives the AES-256-GCM key from the client secret.
func (s *Shared) aead() (cipher.AEAD, error) {
	creds, err := s.creds()
	if err != nil {
		return nil, err
	}
	key, err := hkdf.Key(sha256.New, []byte(creds.Secret), []byte(creds.ClientID), "tmc-runner shared token v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (s *Shared) encrypt(plain []byte) ([]byte, error) {
	aead, err := s.aead()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, []byte(tokenKey)), nil
}

func (s *Shared) decrypt(sealed []byte) ([]byte, error) {
	aead, err := s.aead()
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("sealed token too short")
	}
	return aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte(tokenKey))
}
