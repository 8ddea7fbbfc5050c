"""The stateless rules as in-apiserver CEL: ValidatingAdmissionPolicy + MutatingAdmissionPolicy.

webhook/rules.py and webhook/mutations.py stay the definition. Each CEL expression here sits
beside the Python function it mirrors (named in a comment), and tests/e2e's differential test
runs both on the same objects against a real kube-apiserver.
"""
