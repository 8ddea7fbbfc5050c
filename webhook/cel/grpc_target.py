"""CEL for webhook/grpc_target.py: what grpc-go makes of `spec.sendTo.connectURL`.

Each function mirrors the Python function of the same name there and returns CEL for a
problem: `[]` for none, else `[message, "V"]` (violation) or `[message, "A"]` (advisory).
CEL has no functions of its own, so a check used on several parts of the URL is generated once
per part. IP address syntax is a regular expression equal to what Python's ipaddress accepts
(IPv4: four decimal octets without leading zeros; IPv6: RFC 4291 text forms, an embedded IPv4
tail, an optional non-empty %zone), since CEL's isIP() refuses zones and IPv4-mapped forms.
"""

from __future__ import annotations

from webhook.cel.cel import Manifest, lit, shown, variable
from webhook.grpc_target import DEFAULT_SYNCHRONIZATION_PORT, EXAMPLE, GRPC_DEFAULT_PORT

_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_H = "[0-9A-Fa-f]{1,4}"


def _ipv6_forms() -> str:
    """Every IPv6 text form: (hextets before '::', hextets after), with an IPv4 tail counting
    as two hextets; '::' stands for at least one hextet."""
    forms = [f"({_H}:){{7}}{_H}", f"({_H}:){{6}}{IPV4}"]
    for before in range(8):
        head = f"({_H}:){{{before}}}" if before else ":"
        for after in range(8 - before):
            tail = f"{_H}(:{_H}){{{after - 1}}}" if after else ""
            forms.append(f"{head}:{tail}")
            if before + after + 2 <= 7:
                forms.append(f"{head}:" + (f"({_H}:){{{after}}}" if after else "") + IPV4)
    return "|".join(f"({form})" for form in forms)


IPV6 = f"({_ipv6_forms()})"
# The longest IPv4 and IPv6 texts (zone aside): checked before any regex, so the cost of a
# long connectURL stays within CEL's per-expression budget.
IPV4_MAX, IPV6_MAX = 15, 45
# Python's str.isspace(): what the rule calls whitespace
WHITESPACE = (r"[\t\n\x{b}\x{c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
              r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]")
DNS_LABEL = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
V, A = "'V'", "'A'"


def _problem(message: str, severity: str = V) -> str:
    return f"[{message}, {severity}]"


def _either(first: str, otherwise: str) -> str:
    return f"(({first}).size() > 0 ? ({first}) : ({otherwise}))"


def is_ipv4(text: str) -> str:
    return f"({text}.size() <= {IPV4_MAX} && {text}.matches({lit(f'^({IPV4})$')}))"


def is_ip(text: str) -> str:
    return f"({is_ipv4(text)} || {is_ipv6(text)})"


def is_ipv6(text: str) -> str:
    """An IPv6 address with an optional zone (`%` + anything but `%`, not empty)."""
    address = f"({text}.contains('%') ? {text}.substring(0, {text}.indexOf('%')) : {text})"
    zone = f"{text}.substring({text}.indexOf('%') + 1)"
    return (f"({address}.size() <= {IPV6_MAX} && {address}.matches({lit(f'^({IPV6})$')}) && "
            f"(!{text}.contains('%') || ({zone} != '' && !{zone}.contains('%'))))")


def is_host(host: str) -> str:
    labels = f"({host}.endsWith('.') ? {host}.substring(0, {host}.size() - 1) : {host})"
    # all digits and dots: only an IPv4 address can be that (_is_host)
    return (f"({host}.matches('^[0-9.]+$') ? {is_ipv4(host)} : "
            f"({host}.size() <= 253 && "
            f"{labels}.split('.').all(l, l.matches({lit(DNS_LABEL)}))))")


def no_port(port_required: str) -> str:
    required = lit("no port: passthrough hands the address to the dialer as it is, which needs "
                   f"one: add :{DEFAULT_SYNCHRONIZATION_PORT}")
    advisory = lit(f"no port: gRPC dials port {GRPC_DEFAULT_PORT}, but the synchronization "
                   "controller listens on spec.synchronizationPort (default "
                   f"{DEFAULT_SYNCHRONIZATION_PORT}): add :{DEFAULT_SYNCHRONIZATION_PORT} "
                   f"unless a proxy listens on {GRPC_DEFAULT_PORT}")
    return f"({port_required} ? {_problem(required)} : {_problem(advisory, A)})"


def port_problem(port: str) -> str:
    # leading zeros allowed (Python's int()); at most 5 significant digits before int()
    valid = (f"({port}.matches('^0*[1-9][0-9]{{0,4}}$') && "
             f"int({port}.find('[1-9][0-9]*')) <= 65535)")
    empty = lit(f"ends with ':' but no port: add the port, e.g. :{DEFAULT_SYNCHRONIZATION_PORT}")
    invalid = f"'port ' + {shown(port)} + ' is not a number from 1 to 65535'"
    return f"({port} == '' ? {_problem(empty)} : {valid} ? [] : {_problem(invalid)})"


def host_message(host: str) -> str:
    return f"{shown(host)} + {lit(' is not a valid IPv4 address or DNS name')}"


def endpoint_variables(name: str, endpoint: str, port_required: str,
                       what: str = "address") -> list[Manifest]:
    """_endpoint_problem as variables `<name>...`, the last `<name>Problem`: host:port,
    [ipv6]:port, or a host without port. Each check is evaluated once (variables are lazy
    and cached), which keeps the IP expressions from being repeated."""
    e, v = endpoint, f"variables.{name}"
    v6_example = f"[fd00::5]:{DEFAULT_SYNCHRONIZATION_PORT}"
    one_address = (f"{lit('an IPv6 address needs brackets: grpc-go reads ')} + {shown(e)} + "
                   + lit(f" as one address and dials port {GRPC_DEFAULT_PORT}; write "
                         f"[ipv6]:port, e.g. {v6_example}"))
    bad_brackets = lit(f"expected [ipv6]:port, e.g. {v6_example}")
    needs_brackets = lit(f"an IPv6 address needs brackets, e.g. {v6_example}")
    no_host = lit("no host: gRPC would dial localhost inside the synchronization controller's "
                  f"pod ({EXAMPLE})")
    problem = (
        f"{e} == '' ? {_problem(lit(f'no {what}: add host:port ({EXAMPLE})'))} : "
        f"{v}IsIp ? ({e}.contains(':') ? {_problem(one_address)} : {v}NoPort) : "
        f"{e}.startsWith('[') ? ("
        f"!{e}.contains(']') || !{v}BracketIsIpv6 || "
        f"({v}BracketTail != '' && !{v}BracketTail.startsWith(':')) ? {_problem(bad_brackets)} : "
        f"{v}BracketTail != '' ? {port_problem(f'{v}BracketTail.substring(1)')} : {v}NoPort) : "
        f"!{e}.contains(':') ? ({v}IsHost ? {v}NoPort : {_problem(host_message(e))}) : "
        f"{v}Host.contains(':') ? {_problem(needs_brackets)} : "
        f"{v}Host == '' ? {_problem(no_host)} : "
        f"!{v}HostIsHost ? {_problem(host_message(f'{v}Host'))} : "
        f"{port_problem(f'{v}Port')}")
    return [
        variable(f"{name}IsIp", is_ip(e)),
        variable(f"{name}NoPort", no_port(port_required)),
        variable(f"{name}BracketHost", f"{e}.substring(1, {e}.contains(']') ? "
                                       f"{e}.indexOf(']') : 1)"),
        variable(f"{name}BracketTail", f"{e}.contains(']') ? "
                                       f"{e}.substring({e}.indexOf(']') + 1) : ''"),
        variable(f"{name}Host", f"{e}.substring(0, {e}.contains(':') ? {e}.lastIndexOf(':') : 0)"),
        variable(f"{name}Port", f"{e}.substring({e}.lastIndexOf(':') + 1)"),
        variable(f"{name}BracketIsIpv6", is_ipv6(f"{v}BracketHost")),
        variable(f"{name}IsHost", is_host(e)),
        variable(f"{name}HostIsHost", is_host(f"{v}Host")),
        variable(f"{name}Problem", problem),
    ]


def prefixed(url: str, problem: str) -> str:
    """_prefixed: the problem's message after the URL it is about."""
    return (f"(({problem}).size() == 0 ? [] : "
            f"[{shown(url)} + ': ' + ({problem})[0], ({problem})[1]])")


def resolver_problem() -> str:
    """_resolver_problem for dns: and passthrough: (variables urlAuthority, urlEndpoint)."""
    authority = "variables.authorityProblem"
    return (f"(variables.urlScheme == 'dns' && variables.urlAuthority != '' && "
            f"{authority}.size() > 0 && {authority}[1] == 'V' ? {authority} : "
            "variables.endpointProblem)")


def target_problem() -> str:
    """target_problem of variables.connectURL (the scheme split is in variables urlScheme,
    urlHasScheme and urlRest)."""
    url = "variables.connectURL"
    missing = lit("missing: set host:port of the target cluster's synchronization controller, "
                  "from status.synchronizationAddresses of the target KubeVirt CR or VMIM "
                  f"({EXAMPLE})")
    whitespace = f"{shown(url)} + {lit(' contains whitespace, which no gRPC target can hold')}"
    http = f"{shown(url)} + " + lit(
        " is an http(s) URL, but KubeVirt dials connectURL with gRPC, which wants host:port "
        f"without a scheme ({EXAMPLE})")
    core = (f"{shown(url)} + ': ' + variables.urlScheme + "
            + lit(": is a target scheme of gRPC's C core only; grpc-go, which KubeVirt uses, has "
                  "no such resolver and reads the whole string as a DNS name: drop the ")
            + f" + variables.urlScheme + {lit(f': prefix ({EXAMPLE})')}")
    local = f"{shown(url)} + " + lit(
        " dials a Unix socket inside the source synchronization controller's pod, not the "
        "target cluster; only a local proxy could forward it")
    unregistered = (f"{shown(url)} + ': ' + {shown('variables.urlScheme')} + "
                    + lit(" is not a gRPC resolver scheme (grpc-go registers dns, passthrough "
                          "and unix); use host:port, [ipv6]:port or dns:///host:port"))
    scheme = "variables.urlScheme"
    return (
        f"{url} == '' ? {_problem(missing)} : "
        f"{url}.matches({lit(WHITESPACE)}) ? {_problem(whitespace)} : "
        f"{scheme} in ['http', 'https'] ? {_problem(http)} : "
        f"{scheme} in ['ipv4', 'ipv6'] ? {_problem(core)} : "
        f"{scheme} in ['unix', 'unix-abstract'] ? {_problem(local, A)} : "
        f"{scheme} in ['dns', 'passthrough'] ? {prefixed(url, resolver_problem())} : "
        f"variables.urlRest.startsWith('//') ? {_problem(unregistered)} : "
        f"{prefixed(url, 'variables.wholeProblem')}")


def connect_url_variables() -> list[Manifest]:
    """Everything target_problem() reads, ending with `urlProblem`."""
    url, rest = "variables.connectURL", "variables.urlRest"
    after_slashes = f"{rest}.substring(2)"
    return [
        variable("urlHasScheme", f"{url}.matches('^[A-Za-z][A-Za-z0-9+.-]*:')"),
        variable("urlScheme", f"variables.urlHasScheme ? "
                              f"{url}.substring(0, {url}.indexOf(':')).lowerAscii() : ''"),
        variable("urlRest", f"variables.urlHasScheme ? {url}.substring({url}.indexOf(':') + 1) "
                            f": {url}"),
        # _resolver_problem: `//authority/endpoint` or just `endpoint`
        variable("urlAuthority", f"!{rest}.startsWith('//') ? '' : "
                                 f"{after_slashes}.contains('/') ? "
                                 f"{after_slashes}.substring(0, {after_slashes}.indexOf('/')) : "
                                 f"{after_slashes}"),
        variable("urlEndpoint", f"!{rest}.startsWith('//') ? {rest} : "
                                f"{after_slashes}.contains('/') ? "
                                f"{after_slashes}.substring({after_slashes}.indexOf('/') + 1) "
                                ": ''"),
        *endpoint_variables("whole", url, "false"),
        *endpoint_variables("endpoint", "variables.urlEndpoint",
                            "(variables.urlScheme == 'passthrough')"),
        *endpoint_variables("authority", "variables.urlAuthority", "false", what="DNS server"),
        variable("urlProblem", target_problem()),
    ]
