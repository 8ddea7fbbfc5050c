module dlm-guard.io/bench/gofloor

go 1.26
