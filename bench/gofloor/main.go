// Command gofloor is the floor of the webhook approach for the admission-mode benchmark
// (bench/modes.py): an HTTPS AdmissionReview server that allows every request and patches
// nothing, using only the Go standard library. GET /hits reports how many reviews it answered,
// so the benchmark can tell when the API server calls it.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"sync/atomic"
)

type review struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID string `json:"uid"`
	} `json:"request,omitempty"`
	Response *response `json:"response,omitempty"`
}

type response struct {
	UID     string `json:"uid"`
	Allowed bool   `json:"allowed"`
}

func main() {
	addr := flag.String("listen", "127.0.0.1:8443", "address to serve HTTPS on")
	cert := flag.String("tls-cert", "tls.crt", "serving certificate (PEM)")
	key := flag.String("tls-key", "tls.key", "its private key (PEM)")
	flag.Parse()
	var hits atomic.Int64
	allow := func(w http.ResponseWriter, r *http.Request) {
		var in review
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 7<<20)).Decode(&in); err != nil || in.Request == nil {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		hits.Add(1)
		out := review{APIVersion: in.APIVersion, Kind: in.Kind,
			Response: &response{UID: in.Request.UID, Allowed: true}}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", allow)
	mux.HandleFunc("POST /validate", allow)
	mux.HandleFunc("GET /hits", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, hits.Load())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	server := &http.Server{Addr: *addr, Handler: mux,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	log.Fatal(server.ListenAndServeTLS(*cert, *key))
}
