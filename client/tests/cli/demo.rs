//! `veil demo` (the README's main command): a whole call, then a row per participant and the
//! line from the SFU's tap (SFU-TAP-01): the SFU saw packets, none of them plaintext, while the
//! same search finds plaintext in every frame as the participants sent it.

use crate::common::veil;

#[test]
fn the_demo_call_decrypts_everything_and_the_sfu_saw_only_ciphertext() {
    let out = veil()
        .args(["demo", "--participants", "3", "--seconds", "4"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Four participants (three, then a joiner), each with frames sent and received.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| p") && !l.starts_with("| participant"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in &rows {
        let sent: u64 = r[2].parse().unwrap();
        let received: u64 = r[3].parse().unwrap();
        assert!(sent > 0 && received > 0, "{r:?}");
        assert_eq!(r[4], "0", "decrypt failures: {r:?}");
    }
    let tap = stdout
        .lines()
        .find(|l| l.starts_with("SFU tap"))
        .unwrap_or_else(|| panic!("no tap line: {stdout}"));
    let number_after = |what: &str| -> u64 {
        let rest = &tap[tap.find(what).unwrap_or_else(|| panic!("{what}: {tap}")) + what.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(number_after("record):") > 100, "{tap}");
    assert_eq!(number_after("packets containing plaintext:"), 0, "{tap}");
    assert_eq!(number_after("finds plaintext in"), 200, "{tap}");
}
