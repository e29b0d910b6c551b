package server

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// WriteJSON encodes a value as JSON and writes it with the given status code.
func WriteJSON(w http.ResponseWriter, status int, value interface{}) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(value)
}

// ParseLimit reads the limit query parameter and falls back to a default value.
func ParseLimit(r *http.Request, fallback int) int {
	text := r.URL.Query().Get("limit")
	if text == "" {
		return fallback
	}
	n, err := strconv.Atoi(text)
	if err != nil || n <= 0 {
		return fallback
	}
	return n
}

// BearerToken extracts the token from an Authorization header with the Bearer scheme.
func BearerToken(r *http.Request) (string, bool) {
	header := r.Header.Get("Authorization")
	if !strings.HasPrefix(header, "Bearer ") {
		return "", false
	}
	token := strings.TrimSpace(strings.TrimPrefix(header, "Bearer "))
	return token, token != ""
}

// HealthHandler answers liveness probes with a small JSON status document.
func HealthHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	_ = WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// RequireMethod wraps a handler and rejects requests that use another HTTP method.
func RequireMethod(method string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		next(w, r)
	}
}

// DecodeBody reads a JSON request body into the target value and closes it.
func DecodeBody(r *http.Request, target interface{}) error {
	defer r.Body.Close()
	decoder := json.NewDecoder(r.Body)
	decoder.DisallowUnknownFields()
	return decoder.Decode(target)
}

// ClientIP returns the address of the caller, preferring the forwarded header.
func ClientIP(r *http.Request) string {
	forwarded := r.Header.Get("X-Forwarded-For")
	if forwarded != "" {
		return strings.TrimSpace(strings.Split(forwarded, ",")[0])
	}
	host := r.RemoteAddr
	if i := strings.LastIndex(host, ":"); i >= 0 {
		return host[:i]
	}
	return host
}

// NotFound writes a JSON error document for a resource that does not exist.
func NotFound(w http.ResponseWriter, resource string) {
	_ = WriteJSON(w, http.StatusNotFound, map[string]string{
		"error":    "not found",
		"resource": resource,
	})
}
