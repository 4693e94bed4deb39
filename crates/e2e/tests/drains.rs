//! Log drains as users meet them: `drain:` in stackato.yml (or `strato drain add`) sends
//! the app's log lines to a TCP listener, `drain list` shows it, `drain delete` stops it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::time::Duration;

use strato_e2e::MicroCloud;

#[test]
fn an_apps_log_lines_reach_its_drain() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("stackato.yml"),
        format!("name: chatty\nmem: 64M\ndrain:\n  collector: tcp://{addr}\n"),
    )
    .unwrap();
    std::fs::write(app.path().join("index.html"), "chatty\n").unwrap();
    std::fs::write(
        app.path().join("Procfile"),
        "web: sh -c 'while true; do echo tick-from-chatty; sleep 0.5; done & exec /usr/bin/python3 -m http.server $PORT'\n",
    )
    .unwrap();
    let out = mc.strato_ok(app.path(), &["push", "-n"]);
    assert!(out.contains("Added drain collector"), "{out}");
    let listed = mc.strato_ok(mc.client_home.path(), &["drain", "list", "chatty"]);
    assert!(
        listed.contains("collector") && listed.contains("tcp://"),
        "{listed}"
    );

    // The forwarder connects and the app's output arrives in the apptail format.
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the drain closed");
        if line.contains("tick-from-chatty") {
            break;
        }
    }
    assert!(line.contains(" app.0: tick-from-chatty"), "{line}");

    // A bad URI is refused in one line; delete stops the drain.
    let out = mc.strato(
        mc.client_home.path(),
        &["drain", "add", "chatty", "other", "file:///etc/passwd"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
    mc.strato_ok(
        mc.client_home.path(),
        &["drain", "delete", "chatty", "collector"],
    );
    let listed = mc.strato_ok(mc.client_home.path(), &["drain", "list", "chatty"]);
    assert!(!listed.contains("collector"), "{listed}");
}
