//! Inside the exec cgroup: UDP only to port 53 (by default), no raw sockets. A control run of
//! the same client outside the capture shows each blocked operation does work normally, so the
//! assertions can't pass by accident.

use std::{net::UdpSocket, time::Duration};

use interceptor_tests::*;

/// argv: port of a UDP listener on 127.0.0.1 owned by the test. Each attempt is reported as
/// "ok", "EPERM" or "errno:NAME".
const POLICY_CLIENT: &str = r#"
import errno
listener_port = int(sys.argv[1])
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except PermissionError:
        res[name] = "EPERM"
    except OSError as e:
        res[name] = "errno:%s" % errno.errorcode.get(e.errno, e.errno)
def udp_sendto(host, port, fam=socket.AF_INET):
    def f():
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.sendto(b"ping", (host, port))
        finally:
            s.close()
    return f
def udp_connect_send(host, port):
    def f():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((host, port))
            s.send(b"ping")
        finally:
            s.close()
    return f
def raw(fam, proto):
    def f():
        socket.socket(fam, socket.SOCK_RAW, proto).close()
    return f
attempt("udp_9999", udp_sendto("127.0.0.1", 9999))
attempt("udp_listener", udp_sendto("127.0.0.1", listener_port))
attempt("udp_connect_listener", udp_connect_send("127.0.0.1", listener_port))
attempt("udp6_9999", udp_sendto("::1", 9999, socket.AF_INET6))
attempt("udp_53", udp_sendto("127.0.0.1", 53))
attempt("udp6_53", udp_sendto("::1", 53, socket.AF_INET6))
attempt("raw4", raw(socket.AF_INET, socket.IPPROTO_ICMP))
attempt("raw6", raw(socket.AF_INET6, socket.IPPROTO_ICMPV6))
report(**res)
"#;

fn udp_listener() -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp listener");
    assert_ne!(sock.local_addr().unwrap().port(), 53);
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    sock
}

/// Datagrams that arrived at `sock` (reads until 300 ms of silence).
fn drain(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
        if n > 100 {
            break;
        }
    }
    n
}

fn run_policy_client(cfg: Option<&TempConfig>, listener_port: u16) -> Value {
    let args = [listener_port.to_string()];
    let out = match cfg {
        Some(cfg) => run_python_exec(cfg, None, POLICY_CLIENT, &args, EXEC_TIMEOUT),
        None => run_python(POLICY_CLIENT, &args, EXEC_TIMEOUT),
    };
    assert!(out.success(), "{}", out.describe());
    out.json()
}

#[test]
fn control_outside_capture_udp_and_raw_work() {
    require_root!();
    let sock = udp_listener();
    let r = run_policy_client(None, sock.local_addr().unwrap().port());
    for key in [
        "udp_9999",
        "udp_listener",
        "udp_connect_listener",
        "udp6_9999",
        "udp_53",
        "udp6_53",
        "raw4",
        "raw6",
    ] {
        assert_eq!(r[key], json!("ok"), "{key} outside capture: {}", pretty(&r));
    }
    assert_eq!(
        drain(&sock),
        2,
        "both datagrams reach the listener outside capture"
    );
}

#[test]
fn exec_blocks_udp_except_dns_and_raw_sockets() {
    require_root!();
    let sock = udp_listener();
    let cfg = TempConfig::new("");
    let r = run_policy_client(Some(&cfg), sock.local_addr().unwrap().port());
    let ctx = pretty(&r);
    assert_eq!(
        r["udp_9999"],
        json!("EPERM"),
        "UDP sendto 127.0.0.1:9999\n{ctx}"
    );
    assert_eq!(
        r["udp_listener"],
        json!("EPERM"),
        "UDP sendto to a live listener\n{ctx}"
    );
    assert_eq!(
        r["udp_connect_listener"],
        json!("EPERM"),
        "UDP connect+send to a live listener\n{ctx}"
    );
    assert_eq!(
        r["udp6_9999"],
        json!("EPERM"),
        "UDP sendto [::1]:9999\n{ctx}"
    );
    assert_eq!(
        r["udp_53"],
        json!("ok"),
        "UDP to 127.0.0.1:53 is allowed (DNS)\n{ctx}"
    );
    assert_eq!(
        r["udp6_53"],
        json!("ok"),
        "UDP to [::1]:53 is allowed (DNS)\n{ctx}"
    );
    assert_eq!(r["raw4"], json!("EPERM"), "raw AF_INET socket\n{ctx}");
    assert_eq!(r["raw6"], json!("EPERM"), "raw AF_INET6 socket\n{ctx}");
    assert_eq!(drain(&sock), 0, "a blocked datagram reached the listener");
}

#[test]
fn udp_allow_policy_lets_udp_through_but_not_raw() {
    require_root!();
    let sock = udp_listener();
    let cfg = TempConfig::new("[capture]\nudp = \"allow\"\n");
    let r = run_policy_client(Some(&cfg), sock.local_addr().unwrap().port());
    let ctx = pretty(&r);
    assert_eq!(r["udp_listener"], json!("ok"), "{ctx}");
    assert_eq!(r["udp_connect_listener"], json!("ok"), "{ctx}");
    assert_eq!(r["udp_53"], json!("ok"), "{ctx}");
    assert_eq!(r["raw4"], json!("EPERM"), "raw sockets stay blocked\n{ctx}");
    assert_eq!(
        drain(&sock),
        2,
        "datagrams reach the listener with udp = \"allow\""
    );
}
