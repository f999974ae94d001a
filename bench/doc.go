// Package bench holds measurements that are too slow or too noisy for the
// test suite: they print figures (written into the README) and check only
// that the run was valid, never a timing. Run them with `make bench-follow`.
package bench
