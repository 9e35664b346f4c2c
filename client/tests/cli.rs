//! The `veil` command end to end on loopback: `veil server` prints a working join command,
//! `veil token` mints a second participant's token, two `veil join`s meet in one MLS group,
//! and when one leaves the other ends alone on a later epoch.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_participants_join_and_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Kill(
        veil()
            .args(["server", "--room", "cli", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    // The server prints the exact join command for alice.
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let mut join_alice = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.trim_start().starts_with("veil join ") {
            join_alice = Some(line.trim().to_owned());
            break;
        }
    }
    // Close the server's stdout now, as a script that took the join line would: the server
    // must keep serving (it once died of the broken pipe writing its next line).
    drop(lines);
    let join_alice = join_alice.expect("veil server prints a join command");
    let args: Vec<&str> = join_alice.split_whitespace().skip(1).collect();
    let alice = veil()
        .args(&args)
        .args(["--seconds", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let out = veil()
        .args(["token", "--room", "cli", "--identity", "bob", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let bob_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let bob = veil()
        .args(["join", "--room", "cli", "--seconds", "2", "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--token", &bob_token])
        .output()
        .unwrap();
    let bob_out = String::from_utf8(bob.stdout).unwrap();
    let bob_err = String::from_utf8(bob.stderr).unwrap();
    assert!(
        bob.status.success(),
        "{bob_out}\n{bob_err}\nserver log:\n{}",
        log()
    );
    assert!(
        bob_out.contains("joined room \"cli\" as \"bob\""),
        "{bob_out}"
    );
    assert!(bob_out.contains("2 members: alice, bob"), "{bob_out}");

    let alice = alice.wait_with_output().unwrap();
    let alice_out = String::from_utf8(alice.stdout).unwrap();
    assert!(alice.status.success(), "{alice_out}");
    // Alice created the room (epoch 0), saw bob join (epoch 1), and after bob left the service
    // proposed his removal and alice committed it (epoch 2, alone).
    assert!(
        alice_out.contains("epoch 0 | 1 members: alice"),
        "{alice_out}"
    );
    assert!(
        alice_out.contains("epoch 1 | 2 members: alice, bob"),
        "{alice_out}"
    );
    assert!(
        alice_out.contains("epoch 2 | 1 members: alice"),
        "{alice_out}"
    );
}
