//! RFC 9605 known-answer tests from `vectors/sframe/test-vectors.json` (the cisco/sframe
//! vectors; nobody here wrote them). Checks SF-HDR-01..03, SF-KDF-01, SF-AEAD-01..03.

use crate::common;

use common::{backends, hex_field, read_json};
use veil_sframe::backend::Aad;
use veil_sframe::{CipherSuite, KeyMaterial, KeyStore, SenderKey, SframeHeader, kdf};

#[test]
fn all_289_header_vectors_encode_and_parse() {
    let v = read_json("sframe/test-vectors.json");
    let cases = v["header"].as_array().unwrap();
    assert_eq!(
        cases.len(),
        289,
        "the vector file should hold 289 header cases"
    );
    let mut buf = [0u8; veil_sframe::MAX_HEADER_LEN];
    for c in cases {
        let kid = c["kid"].as_u64().unwrap();
        let ctr = c["ctr"].as_u64().unwrap();
        let want = hex_field(c, "encoded");
        let h = SframeHeader::new(kid, ctr);
        let n = h.write(&mut buf).unwrap();
        assert_eq!(&buf[..n], &want[..], "encode kid={kid} ctr={ctr}");
        assert_eq!(
            SframeHeader::parse(&want).unwrap(),
            (h, want.len()),
            "parse {c}"
        );
        // Every proper prefix is truncated (SF-HDR-04).
        for cut in 0..want.len() {
            assert!(
                SframeHeader::parse(&want[..cut]).is_err(),
                "prefix {cut} of {c}"
            );
        }
    }
}

#[test]
fn all_3_aes_ctr_hmac_vectors_seal_and_open() {
    let v = read_json("sframe/test-vectors.json");
    let cases = v["aes_ctr_hmac"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for c in cases {
        let suite = CipherSuite::from_id(c["cipher_suite"].as_u64().unwrap() as u16).unwrap();
        assert!(suite.is_ctr_hmac());
        let key = hex_field(c, "key");
        assert_eq!(&key[..16], &hex_field(c, "enc_key")[..]);
        assert_eq!(&key[16..], &hex_field(c, "auth_key")[..]);
        let nonce: [u8; 12] = hex_field(c, "nonce").try_into().unwrap();
        let aad = hex_field(c, "aad");
        let pt = hex_field(c, "pt");
        let want = hex_field(c, "ct");
        for backend in backends() {
            let k = backend.new_key(suite, &key).unwrap();
            let mut buf = pt.clone();
            let mut tag = vec![0u8; suite.tag_len()];
            let a = Aad {
                header: &aad,
                metadata: &[],
            };
            k.seal(&nonce, a, &mut buf, &mut tag).unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(buf, want, "{suite} via {}", backend.name());
            let (ct, tag) = want.split_at(pt.len());
            let mut ct = ct.to_vec();
            k.open(&nonce, a, &mut ct, tag).unwrap();
            assert_eq!(ct, pt);
        }
    }
}

#[test]
fn all_5_sframe_vectors_derive_encrypt_and_decrypt() {
    let v = read_json("sframe/test-vectors.json");
    let cases = v["sframe"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let mut seen = Vec::new();
    for c in cases {
        let suite = CipherSuite::from_id(c["cipher_suite"].as_u64().unwrap() as u16).unwrap();
        seen.push(suite);
        let kid = c["kid"].as_u64().unwrap();
        let ctr = c["ctr"].as_u64().unwrap();
        let base_key = hex_field(c, "base_key");
        let (key_label, salt_label) = kdf::labels(suite, kid);
        assert_eq!(key_label, hex_field(c, "sframe_key_label"), "{suite}");
        assert_eq!(salt_label, hex_field(c, "sframe_salt_label"), "{suite}");
        let m = kdf::derive_key_material(suite, kid, &base_key).unwrap();
        let want_salt: [u8; 12] = hex_field(c, "sframe_salt").try_into().unwrap();
        assert_eq!(
            m,
            KeyMaterial::new(&hex_field(c, "sframe_key"), &want_salt).unwrap(),
            "{suite}"
        );
        assert_eq!(
            veil_sframe::nonce::form_nonce(m.salt(), ctr).to_vec(),
            hex_field(c, "nonce"),
            "{suite}"
        );
        let metadata = hex_field(c, "metadata");
        let pt = hex_field(c, "pt");
        let want = hex_field(c, "ct");
        let hlen = SframeHeader::new(kid, ctr).encoded_len();
        // AAD = header || metadata (RFC 9605 §4.4.3).
        assert_eq!([&want[..hlen], &metadata[..]].concat(), hex_field(c, "aad"));
        for backend in backends() {
            let mut sender = SenderKey::new(suite, kid, &m, backend)
                .unwrap()
                .with_counter(ctr);
            let mut out = vec![0u8; want.len()];
            let n = sender.encrypt(&metadata, &pt, &mut out).unwrap();
            assert_eq!(&out[..n], &want[..], "{suite} via {}", backend.name());
            let mut store = KeyStore::with_backend(backend);
            store.insert(suite, kid, &m).unwrap();
            let mut frame = want.clone();
            let d = store.decrypt_in_place(&metadata, &mut frame).unwrap();
            assert_eq!(d.header, SframeHeader::new(kid, ctr));
            assert_eq!(d.plaintext, &pt[..]);
        }
    }
    assert_eq!(seen, CipherSuite::ALL.to_vec(), "one vector per suite");
}
