"""What grpc-go makes of a VMIM's `spec.sendTo.connectURL`: pure, for the `connect-url` rule.

KubeVirt's synchronization controller hands connectURL unchanged to `grpc.NewClient`
(pkg/synchronization-controller/synchronization-controller.go, createOutboundConnection).
grpc-go (v1.79, the version KubeVirt main vendors) parses it as follows (clientconn.go,
initParsedTargetAndResolverBuilder; internal/resolver/dns/dns_resolver.go, parseTarget):

- `scheme:...` with a registered scheme goes to that resolver: `dns`, `passthrough`, `unix`,
  `unix-abstract` are the only ones registered by default.
- Anything else (no scheme, or a scheme nobody registered, `ipv4:` and `https:` included) is
  retried as `dns:///<the whole string>`.
- The DNS resolver takes `host:port`, `[ipv6]:port`, or an address without port, to which it
  adds port 443; a bare IPv6 address (`fd00::5:9185`) is one address, so it dials port 443.
- `passthrough` hands the endpoint to net.Dial, which needs a port.
See docs/kubevirt-facts.md, "connectURL".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from dlm_guard.domain import Severity

DEFAULT_SYNCHRONIZATION_PORT = 9185  # KubeVirt CR spec.synchronizationPort default
GRPC_DEFAULT_PORT = 443  # grpc-go's DNS resolver, for an address without a port
EXAMPLE = f"e.g. 10.1.2.3:{DEFAULT_SYNCHRONIZATION_PORT}"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_LOCAL_SCHEMES = ("unix", "unix-abstract")


@dataclass(frozen=True, slots=True)
class TargetProblem:
    """Why a dial target cannot (VIOLATION) or may not (ADVISORY) reach the target cluster."""

    message: str
    severity: Severity = Severity.VIOLATION


def shown(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# CEL: webhook/cel/grpc_target.py target_problem() mirrors every function of this module.
def target_problem(url: object) -> TargetProblem | None:
    """None when grpc-go can dial `url` to a TCP address with an explicit port."""
    if not isinstance(url, str) or not url:
        return TargetProblem(
            "missing: set host:port of the target cluster's synchronization controller, from "
            f"status.synchronizationAddresses of the target KubeVirt CR or VMIM ({EXAMPLE})")
    if any(char.isspace() for char in url):
        return TargetProblem(f"{shown(url)} contains whitespace, which no gRPC target can hold")
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    rest = url[match.end():] if match else url
    problem = _scheme_problem(url, scheme, rest)
    if problem is not None or scheme in ("dns", "passthrough", *_LOCAL_SCHEMES):
        return problem
    if rest.startswith("//"):  # an unregistered scheme:// is not a host:port either
        return TargetProblem(
            f"{shown(url)}: {shown(scheme)} is not a gRPC resolver scheme (grpc-go registers "
            "dns, passthrough and unix); use host:port, [ipv6]:port or dns:///host:port")
    return _prefixed(url, _endpoint_problem(url, port_required=False))


def _scheme_problem(url: str, scheme: str, rest: str) -> TargetProblem | None:
    if scheme in ("http", "https"):
        return TargetProblem(
            f"{shown(url)} is an http(s) URL, but KubeVirt dials connectURL with gRPC, which "
            f"wants host:port without a scheme ({EXAMPLE})")
    if scheme in ("ipv4", "ipv6"):
        return TargetProblem(
            f"{shown(url)}: {scheme}: is a target scheme of gRPC's C core only; grpc-go, which "
            "KubeVirt uses, has no such resolver and reads the whole string as a DNS name: "
            f"drop the {scheme}: prefix ({EXAMPLE})")
    if scheme in _LOCAL_SCHEMES:
        return TargetProblem(
            f"{shown(url)} dials a Unix socket inside the source synchronization controller's "
            "pod, not the target cluster; only a local proxy could forward it",
            Severity.ADVISORY)
    if scheme in ("dns", "passthrough"):
        return _prefixed(url, _resolver_problem(scheme, rest))
    return None


def _resolver_problem(scheme: str, rest: str) -> TargetProblem | None:
    authority, endpoint = "", rest
    if rest.startswith("//"):
        authority, _, endpoint = rest[2:].partition("/")
    if scheme == "dns" and authority:
        problem = _endpoint_problem(authority, port_required=False, what="DNS server")
        if problem is not None and problem.severity is Severity.VIOLATION:
            return problem
    return _endpoint_problem(endpoint, port_required=scheme == "passthrough")


def _prefixed(url: str, problem: TargetProblem | None) -> TargetProblem | None:
    if problem is None:
        return None
    return TargetProblem(f"{shown(url)}: {problem.message}", problem.severity)


def _endpoint_problem(endpoint: str, *, port_required: bool,
                      what: str = "address") -> TargetProblem | None:
    """Checks `host:port`, `[ipv6]:port`, or a host without port (dns: port 443)."""
    if not endpoint:
        return TargetProblem(f"no {what}: add host:port ({EXAMPLE})")
    if _is_ip(endpoint):
        if ":" in endpoint:  # grpc-go reads the whole string as one IPv6 address
            return TargetProblem(
                f"an IPv6 address needs brackets: grpc-go reads {shown(endpoint)} as one "
                f"address and dials port {GRPC_DEFAULT_PORT}; write [ipv6]:port, e.g. "
                f"[fd00::5]:{DEFAULT_SYNCHRONIZATION_PORT}")
        return _no_port(port_required)
    if endpoint.startswith("["):
        host, bracket, tail = endpoint[1:].partition("]")
        if not bracket or not _is_ipv6(host) or (tail and not tail.startswith(":")):
            return TargetProblem(f"expected [ipv6]:port, e.g. [fd00::5]:"
                                 f"{DEFAULT_SYNCHRONIZATION_PORT}")
        return _port_problem(tail[1:]) if tail else _no_port(port_required)
    host, colon, port = endpoint.rpartition(":")
    if not colon:
        return _host_problem(endpoint) or _no_port(port_required)
    if ":" in host:
        return TargetProblem(f"an IPv6 address needs brackets, e.g. [fd00::5]:"
                             f"{DEFAULT_SYNCHRONIZATION_PORT}")
    if not host:
        return TargetProblem("no host: gRPC would dial localhost inside the synchronization "
                             f"controller's pod ({EXAMPLE})")
    return _host_problem(host) or _port_problem(port)


def _no_port(port_required: bool) -> TargetProblem:
    if port_required:
        return TargetProblem("no port: passthrough hands the address to the dialer as it is, "
                             f"which needs one: add :{DEFAULT_SYNCHRONIZATION_PORT}")
    return TargetProblem(
        f"no port: gRPC dials port {GRPC_DEFAULT_PORT}, but the synchronization controller "
        f"listens on spec.synchronizationPort (default {DEFAULT_SYNCHRONIZATION_PORT}): add "
        f":{DEFAULT_SYNCHRONIZATION_PORT} unless a proxy listens on {GRPC_DEFAULT_PORT}",
        Severity.ADVISORY)


def _port_problem(port: str) -> TargetProblem | None:
    if not port:
        return TargetProblem("ends with ':' but no port: add the port, e.g. "
                             f":{DEFAULT_SYNCHRONIZATION_PORT}")
    if port.isascii() and port.isdigit() and 1 <= int(port) <= 65535:
        return None
    return TargetProblem(f"port {shown(port)} is not a number from 1 to 65535")


def _host_problem(host: str) -> TargetProblem | None:
    return None if _is_host(host) else TargetProblem(
        f"{shown(host)} is not a valid IPv4 address or DNS name")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_host(host: str) -> bool:
    if re.fullmatch(r"[0-9.]+", host):  # all digits and dots: must be a real IPv4 address
        return _is_ip(host)
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_DNS_LABEL.match(label) for label in labels)
