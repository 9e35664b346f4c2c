//! The `ext_block` target (fuzz/README.md).
use veil_wire::ext::{Extension, ExtensionForm, Extensions, write_block};

/// Header-extension block parse in both forms: never panics; elements that parse are re-written
/// and read back unchanged. The first byte picks the form.
pub fn ext_block(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let form = if sel & 1 == 0 {
        ExtensionForm::OneByte
    } else {
        ExtensionForm::TwoByte { appbits: sel >> 4 }
    };
    let parsed: Result<Vec<Extension<'_>>, _> = Extensions::new(form, body).collect();
    if let Ok(els) = parsed {
        let mut out = vec![0u8; 4 * body.len() + 8];
        let (profile, n) = write_block(&els, &mut out).expect("parsed elements can be written");
        let back: Vec<Extension<'_>> = Extensions::with_profile(profile, &out[..n])
            .unwrap()
            .collect::<Result<_, _>>()
            .expect("our output parses");
        assert_eq!(back, els);
    }
}
