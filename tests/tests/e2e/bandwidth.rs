//! A subscriber behind a 300 kbit/s bottleneck, then none (issue 23; specs/sfu.md SFU-BWE-10;
//! the scenario: `veil_e2e::bandwidth`): the layer the SFU forwards to bob follows the cap down
//! and back up, and bob keeps decrypting alice's audio all along.

use std::time::Duration;

use veil_e2e::bandwidth::{issue_phases, run, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_layer_follows_a_300_kbit_cap_and_audio_goes_on() {
    let phases = run(&issue_phases()).await;
    let t = table(&phases);
    eprintln!("{t}");
    let (free, capped, uncapped) = (&phases[0], &phases[1], &phases[2]);
    assert_eq!(free.last_layer(), Some(2), "top layer on a free path\n{t}");
    assert_eq!(
        capped.last_layer(),
        Some(0),
        "the lowest layer at 300 kbit/s\n{t}"
    );
    assert_eq!(
        uncapped.last_layer(),
        Some(2),
        "the top layer again once uncapped\n{t}"
    );
    for p in &phases {
        // The cap's first second drops what the SFU still sends at the top layer, audio
        // among it, until its estimate falls (specs/sfu.md SFU-BWE-10): at most a tenth of a
        // phase's audio, and never a silence of a second.
        assert!(
            p.audio_received * 10 >= p.audio_sent * 9,
            "{}: bob decrypted {} of {} audio frames alice sent\n{t}",
            p.name,
            p.audio_received,
            p.audio_sent
        );
        assert!(
            p.longest_gap < Duration::from_secs(1),
            "{}: audio stopped for {:?}\n{t}",
            p.name,
            p.longest_gap
        );
    }
}
