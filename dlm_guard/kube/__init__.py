"""The one Kubernetes access layer of both services (DESIGN.md): which cluster and how to
reach it (config), the resources we read (resources), raw list/watch calls (api), one
informer per watched resource (informer) and a cluster's set of them (cache), with their
health as metrics (metrics). Imports the kubernetes client; the pure core never does."""
