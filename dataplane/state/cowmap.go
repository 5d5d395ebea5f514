package state

import (
	"hash/maphash"
)

// shards is the number of shards of a cowMap. A write copies one shard, so with 100,000 entries it copies
// about 400: the cost of a change does not grow with the mesh the way copying a whole map would.
const shards = 256

// cowMap is an immutable map split into shards. Set and Delete return a new map sharing every shard but
// the one they change; readers of an old map are never disturbed.
type cowMap[K comparable, V any] struct {
	seed   maphash.Seed
	shards *[shards]map[K]V
	n      int
}

func newCowMap[K comparable, V any](seed maphash.Seed) cowMap[K, V] {
	return cowMap[K, V]{seed: seed, shards: &[shards]map[K]V{}}
}

func (m cowMap[K, V]) shard(k K) int {
	return int(maphash.Comparable(m.seed, k) % shards)
}

// Get returns the value of k.
func (m cowMap[K, V]) Get(k K) (V, bool) {
	v, ok := m.shards[m.shard(k)][k]
	return v, ok
}

// Len is the number of entries.
func (m cowMap[K, V]) Len() int { return m.n }

// Set returns a map where k has v.
func (m cowMap[K, V]) Set(k K, v V) cowMap[K, V] {
	i := m.shard(k)
	old := m.shards[i]
	next := make(map[K]V, len(old)+1)
	for kk, vv := range old {
		next[kk] = vv
	}
	_, existed := old[k]
	next[k] = v
	out := m.with(i, next)
	if !existed {
		out.n++
	}
	return out
}

// Delete returns a map without k.
func (m cowMap[K, V]) Delete(k K) cowMap[K, V] {
	i := m.shard(k)
	old := m.shards[i]
	if _, ok := old[k]; !ok {
		return m
	}
	next := make(map[K]V, len(old))
	for kk, vv := range old {
		if kk != k {
			next[kk] = vv
		}
	}
	out := m.with(i, next)
	out.n--
	return out
}

func (m cowMap[K, V]) with(i int, shard map[K]V) cowMap[K, V] {
	arr := *m.shards
	arr[i] = shard
	return cowMap[K, V]{seed: m.seed, shards: &arr, n: m.n}
}

// All calls f for every entry until f returns false.
func (m cowMap[K, V]) All(f func(K, V) bool) {
	for _, s := range m.shards {
		for k, v := range s {
			if !f(k, v) {
				return
			}
		}
	}
}

// batch applies many changes to a map, copying each shard at most once. It is how a delta of many resources
// is applied: one copy per touched shard instead of one per change.
type batch[K comparable, V any] struct {
	base   cowMap[K, V]
	copied map[int]map[K]V
	n      int
}

func (m cowMap[K, V]) batch() *batch[K, V] {
	return &batch[K, V]{base: m, copied: map[int]map[K]V{}, n: m.n}
}

func (b *batch[K, V]) shardFor(k K) map[K]V {
	i := b.base.shard(k)
	if s, ok := b.copied[i]; ok {
		return s
	}
	old := b.base.shards[i]
	s := make(map[K]V, len(old)+1)
	for kk, vv := range old {
		s[kk] = vv
	}
	b.copied[i] = s
	return s
}

func (b *batch[K, V]) Get(k K) (V, bool) {
	if s, ok := b.copied[b.base.shard(k)]; ok {
		v, ok := s[k]
		return v, ok
	}
	return b.base.Get(k)
}

func (b *batch[K, V]) Set(k K, v V) {
	s := b.shardFor(k)
	if _, ok := s[k]; !ok {
		b.n++
	}
	s[k] = v
}

func (b *batch[K, V]) Delete(k K) {
	if _, ok := b.Get(k); !ok {
		return
	}
	delete(b.shardFor(k), k)
	b.n--
}

func (b *batch[K, V]) done() cowMap[K, V] {
	if len(b.copied) == 0 {
		return b.base
	}
	arr := *b.base.shards
	for i, s := range b.copied {
		arr[i] = s
	}
	return cowMap[K, V]{seed: b.base.seed, shards: &arr, n: b.n}
}
