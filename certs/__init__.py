"""X.509 for dlm-guard: the one package that knows certificates (cryptography, no openssl).

- generate: a private CA and a serving certificate (`dlm-guard certs generate`)
- bundle:   strict PEM CA-bundle parsing, filtering and canonical output (reconciler CA sync)
- tls:      the webhook's serving certificate, hot-reloaded without restarts
- cli:      `dlm-guard certs generate | inspect | ca-bundle`
"""
