package server

import (
	"errors"
	"sync"
	"time"
)

// Cache keeps values in memory with an expiry time per entry.
type Cache struct {
	mu      sync.Mutex
	entries map[string]entry
	ttl     time.Duration
}

type entry struct {
	value   string
	expires time.Time
}

// NewCache creates an empty cache whose entries live for the given duration.
func NewCache(ttl time.Duration) *Cache {
	return &Cache{
		entries: make(map[string]entry),
		ttl:     ttl,
	}
}

// Get returns the cached value for a key when it has not expired yet.
func (c *Cache) Get(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || time.Now().After(e.expires) {
		return "", false
	}
	return e.value, true
}

// Set stores a value under a key and resets its expiry time.
func (c *Cache) Set(key, value string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[key] = entry{value: value, expires: time.Now().Add(c.ttl)}
}

// Delete removes a key from the cache if it is present.
func (c *Cache) Delete(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, key)
}

// Purge drops every expired entry and returns how many were removed.
func (c *Cache) Purge() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	removed := 0
	now := time.Now()
	for key, e := range c.entries {
		if now.After(e.expires) {
			delete(c.entries, key)
			removed++
		}
	}
	return removed
}

// Len counts the entries currently held, expired ones included.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// MustGet returns the value for a key or an error when the key is missing.
func (c *Cache) MustGet(key string) (string, error) {
	value, ok := c.Get(key)
	if !ok {
		return "", errors.New("cache: key not found: " + key)
	}
	return value, nil
}

// Keys lists every key in the cache, including keys of expired entries.
func (c *Cache) Keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.entries))
	for key := range c.entries {
		keys = append(keys, key)
	}
	return keys
}
