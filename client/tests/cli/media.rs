//! `veil join --video F.ivf --audio F.ogg` publishes files through the real server and SFU;
//! another `veil join --save DIR` decrypts them and saves them. The saved files must parse, and
//! they must hold exactly the published frames, byte for byte and in order. Frames from before
//! the receiver's first key frame may be missing. The files loop with timestamps that keep
//! counting, and the status lines show no decrypt failure.

use std::fs::File;
use std::process::Stdio;

use veil_cli::media_files::ivf::{IvfHeader, IvfReader, IvfWriter};
use veil_cli::media_files::ogg::{OggOpusReader, OggOpusWriter, OpusHead};

use crate::common::{Kill, Server, veil};

const VIDEO_FRAMES: usize = 45; // 1.5 s at 30 frames/s, so a run of seconds loops it
const KEY_EVERY: usize = 15;
const AUDIO_PACKETS: usize = 50; // 1 s of 20 ms packets

/// VP8-shaped frames, each unique: a frame tag (key frames also carry the start code and
/// 320×240), the index, then filler of varying length, some frames several packets long.
fn video_frames() -> Vec<Vec<u8>> {
    (0..VIDEO_FRAMES)
        .map(|i| {
            let key = i % KEY_EVERY == 0;
            let len = if key {
                6000 + i * 10
            } else {
                200 + (i * 137) % 2500
            };
            let mut f = if key {
                vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
            } else {
                vec![0x11, 0x02, 0x00]
            };
            f.extend_from_slice(&(i as u16).to_le_bytes());
            f.extend((0..len).map(|j| (i * 31 + j) as u8));
            f
        })
        .collect()
}

/// Opus-shaped 20 ms packets (hybrid full band TOC), each unique.
fn audio_packets() -> Vec<Vec<u8>> {
    (0..AUDIO_PACKETS)
        .map(|i| {
            let mut p = vec![0x78, i as u8];
            p.extend((0..40 + i % 30).map(|j| (i * 7 + j) as u8));
            p
        })
        .collect()
}

fn status_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("room media |"))
        .collect()
}

#[test]
fn published_files_arrive_byte_identical_in_saved_files() {
    let server = Server::start("media");
    let video = video_frames();
    let audio = audio_packets();
    let ivf_path = server.file("in.ivf");
    let mut w = IvfWriter::new(
        File::create(&ivf_path).unwrap(),
        &IvfHeader {
            rate: 30,
            scale: 1,
            ..IvfHeader::vp8(320, 240)
        },
    )
    .unwrap();
    for (i, f) in video.iter().enumerate() {
        w.write_frame(i as u64, f).unwrap();
    }
    w.finish().unwrap();
    let ogg_path = server.file("in.ogg");
    let head = OpusHead {
        channels: 1,
        pre_skip: 312,
        input_rate: 48_000,
    };
    let mut w = OggOpusWriter::new(File::create(&ogg_path).unwrap(), 9, &head).unwrap();
    for (i, p) in audio.iter().enumerate() {
        w.write_packet(p, 312 + 960 * (i as u64 + 1)).unwrap();
    }
    w.finish().unwrap();

    let alice = Kill(
        veil()
            .args(["join", "--room", "media", "--seconds", "12", "--url"])
            .arg(server.url())
            .args(["--token", &server.token("media", "alice")])
            .arg("--video")
            .arg(&ivf_path)
            .arg("--audio")
            .arg(&ogg_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let saved = server.file("saved");
    let bob = veil()
        .args([
            "join",
            "--room",
            "media",
            "--receive-only",
            "--seconds",
            "5",
        ])
        .args(["--url", &server.url()])
        .args(["--token", &server.token("media", "bob")])
        .arg("--save")
        .arg(&saved)
        .output()
        .unwrap();
    let bob_out = String::from_utf8(bob.stdout).unwrap();
    let bob_err = String::from_utf8(bob.stderr).unwrap();
    assert!(
        bob.status.success(),
        "{bob_out}\n{bob_err}\nserver log:\n{}",
        server.log()
    );

    // Bob's status: both participants, frames in, never a decrypt failure.
    let lines = status_lines(&bob_out);
    assert!(lines.len() >= 4, "{bob_out}");
    assert!(
        lines
            .iter()
            .all(|l| l.split(" | ").any(|part| part == "decrypt failures 0")),
        "{bob_out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("2 participants: alice, bob")),
        "{bob_out}"
    );
    assert!(
        lines.last().unwrap().contains("| out 0 audio, 0 video |"),
        "{bob_out}"
    );
    assert!(bob_out.contains("saved alice: "), "{bob_out}");

    // The video: starts at a key frame, then every frame in order, looping over the file,
    // with timestamps one frame (3000 at 90 kHz) apart across the loops.
    let mut r = IvfReader::new(File::open(saved.join("alice.ivf")).unwrap()).unwrap();
    assert_eq!(&r.header().fourcc, b"VP80");
    assert_eq!((r.header().width, r.header().height), (320, 240));
    let mut frames = Vec::new();
    while let Some(f) = r.next_frame().unwrap() {
        frames.push(f);
    }
    assert_eq!(r.header().frames as usize, frames.len());
    assert!(frames.len() > VIDEO_FRAMES, "{} frames saved", frames.len());
    let k = video
        .iter()
        .position(|v| *v == frames[0].data)
        .expect("the first saved frame was published");
    assert_eq!(k % KEY_EVERY, 0, "the saved video starts at a key frame");
    for (i, f) in frames.iter().enumerate() {
        assert!(
            f.data == video[(k + i) % VIDEO_FRAMES],
            "saved video frame {i} is not published frame {}",
            (k + i) % VIDEO_FRAMES
        );
        assert_eq!(f.pts, 3000 * i as u64, "saved video frame {i}");
    }

    // The audio: every packet in order, looping, granule positions 960 apart.
    let mut r = OggOpusReader::new(File::open(saved.join("alice.ogg")).unwrap()).unwrap();
    let mut packets = Vec::new();
    while let Some(p) = r.next_packet().unwrap() {
        packets.push(p);
    }
    assert!(
        packets.len() > AUDIO_PACKETS,
        "{} packets saved",
        packets.len()
    );
    let k = audio
        .iter()
        .position(|a| *a == packets[0].data)
        .expect("the first saved packet was published");
    for (i, p) in packets.iter().enumerate() {
        assert!(
            p.data == audio[(k + i) % AUDIO_PACKETS],
            "saved audio packet {i} is not published packet {}",
            (k + i) % AUDIO_PACKETS
        );
        assert_eq!(
            p.granule,
            Some(960 * (i as u64 + 1)),
            "saved audio packet {i}"
        );
    }

    // Alice published both files and never failed to publish.
    let mut alice = alice;
    let _ = alice.0.kill();
    let _ = alice.0.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut alice.0.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        status_lines(&out)
            .iter()
            .any(|l| !l.contains("out 0 audio") && !l.contains(", 0 video")),
        "{out}"
    );
    assert!(!out.contains("publish errors"), "{out}");
}

/// A bad file is refused with a message naming it and what is wrong, before joining (no
/// server runs here), and the process exits non-zero instead of panicking.
#[test]
fn bad_files_are_refused_before_joining() {
    let dir = tempfile::tempdir().unwrap();
    // Only the claims are read before joining; the server would check the signature.
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIiwicm9vbSI6InIifQ.c2ln";
    let mut ivf = Vec::new();
    let mut w = IvfWriter::new(&mut ivf, &IvfHeader::vp8(2, 2)).unwrap();
    w.write_frame(0, &[0x10; 100]).unwrap();
    let truncated = dir.path().join("truncated.ivf");
    std::fs::write(&truncated, &ivf[..ivf.len() - 10]).unwrap();
    let not_ogg = dir.path().join("not.ogg");
    std::fs::write(&not_ogg, &ivf).unwrap();
    let cases = [
        ("--video", &truncated, "it ends inside the IVF frame"),
        ("--audio", &not_ogg, "not an Ogg file"),
        ("--video", &dir.path().join("missing.ivf"), "No such file"),
    ];
    for (flag, path, why) in cases {
        let out = veil()
            .args(["join", "--room", "r", "--url", "http://127.0.0.1:9"])
            .args(["--token", token, flag])
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(why),
            "{flag} {}: {err}",
            path.display()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
