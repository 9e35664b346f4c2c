//! `veil server` prints a working join command, `veil token` mints a second participant's
//! token, two `veil join`s meet in one MLS group, and when one leaves the other ends alone on
//! a later epoch.

use std::process::Stdio;

use crate::common::{Server, veil};

#[test]
fn two_participants_join_and_one_leaves() {
    let server = Server::start("cli");
    let args: Vec<&str> = server.join_line.split_whitespace().skip(1).collect();
    let alice = veil()
        .args(&args)
        .args(["--seconds", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let bob_token = server.token("cli", "bob");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let bob = veil()
        .args(["join", "--room", "cli", "--seconds", "2", "--url"])
        .arg(server.url())
        .args(["--token", &bob_token])
        .output()
        .unwrap();
    let bob_out = String::from_utf8(bob.stdout).unwrap();
    let bob_err = String::from_utf8(bob.stderr).unwrap();
    assert!(
        bob.status.success(),
        "{bob_out}\n{bob_err}\nserver log:\n{}",
        server.log()
    );
    assert!(
        bob_out.contains("joined room \"cli\" as \"bob\""),
        "{bob_out}"
    );
    assert!(bob_out.contains("2 participants: alice, bob"), "{bob_out}");

    let alice = alice.wait_with_output().unwrap();
    let alice_out = String::from_utf8(alice.stdout).unwrap();
    assert!(alice.status.success(), "{alice_out}");
    // Alice created the room (epoch 0), saw bob join (epoch 1), and after bob left the service
    // proposed his removal and alice committed it (epoch 2, alone).
    assert!(
        alice_out.contains("epoch 0 | 1 participant: alice |"),
        "{alice_out}"
    );
    assert!(
        alice_out.contains("epoch 1 | 2 participants: alice, bob |"),
        "{alice_out}"
    );
    assert!(
        alice_out.contains("epoch 2 | 1 participant: alice |"),
        "{alice_out}"
    );
}
