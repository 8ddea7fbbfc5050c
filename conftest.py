"""pytest set-up for the whole repository.

Living at the root puts the repository on sys.path first, so `import certs` or
`import controlplane` finds the packages, never the same-named test folders.
"""

pytest_plugins = ["controlplane.pytest_plugin"]
