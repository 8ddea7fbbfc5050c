"""The harness tests start their own clusters; they share only the `binaries` fixture."""
