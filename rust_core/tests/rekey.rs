//! Re-keying through the public Rust API: a signed file (with its digest table) grown and
//! shrunk back by rewrites keeps its signature and canonical layout; too many recipients are
//! refused with the file untouched.

use std::io::Cursor;
use std::path::PathBuf;

use enctensor_core::{
    header, rekey_file, write_to, Credential, Dtype, Error, Reader, Recipient, Rekeyed,
    TensorSource, WriteOptions,
};

const KEY: [u8; 32] = [0x42; 32];
const SEED: [u8; 32] = [7u8; 32];

fn signed_file() -> Vec<u8> {
    let big: Vec<u8> = (0..5 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
    let small: Vec<u8> = (0..24).collect();
    let sources = vec![
        TensorSource {
            name: "big".into(),
            dtype: Dtype::U8,
            shape: vec![big.len() as u64],
            data: &big,
            encrypted: true,
        },
        TensorSource {
            name: "clear".into(),
            dtype: Dtype::F32,
            shape: vec![2, 3],
            data: &small,
            encrypted: false,
        },
    ];
    let opts = WriteOptions {
        chunk_size: 4096,
        recipients: vec![Recipient::key(&KEY).unwrap()],
        log_n: 10,
        sign_seed: Some(zeroize::Zeroizing::new(SEED)),
        ..WriteOptions::default()
    };
    let mut cur = Cursor::new(Vec::new());
    write_to(&mut cur, &sources, &opts).unwrap();
    cur.into_inner()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("enct-rekey-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn public() -> Vec<u8> {
    ed25519_dalek::SigningKey::from_bytes(&SEED)
        .verifying_key()
        .to_bytes()
        .to_vec()
}

#[test]
fn rewrites_keep_the_signature_digests_and_canonical_layout() {
    let dir = scratch("signed");
    let path = dir.join("m.enct");
    let original = signed_file();
    std::fs::write(&path, &original).unwrap();
    let key = Credential::key(&KEY).unwrap();
    let many: Vec<Recipient> = std::iter::once(Recipient::key(&KEY).unwrap())
        .chain((1..=100u8).map(|i| Recipient::key(&[i; 32]).unwrap()))
        .collect();

    assert_eq!(
        rekey_file(&path, &key, &many, 10, 18).unwrap(),
        Rekeyed::Rewritten
    );
    let grown = std::fs::read(&path).unwrap();
    let h = header::parse_file(&grown).unwrap();
    assert!(h.chunk_digest && h.stanzas.len() == 101);
    // parse_file checked the canonical stanza area; and the data offset:
    assert_eq!(h.data_offset, h.tables_end().div_ceil(4096) * 4096);
    let r = Reader::open(&path, &key, Some(&public()), 18).unwrap();
    r.verify_all().unwrap();
    drop(r);

    // Back to one stanza: the area must shrink back to the first page (a rewrite), and the
    // file is then the original outside the stanza area.
    let one = [Recipient::key(&KEY).unwrap()];
    assert_eq!(
        rekey_file(&path, &key, &one, 10, 18).unwrap(),
        Rekeyed::Rewritten
    );
    let back = std::fs::read(&path).unwrap();
    assert_eq!(back.len(), original.len());
    assert_eq!(back[..32], original[..32]);
    assert_eq!(back[4096..], original[4096..]);
    let r = Reader::open(&path, &key, Some(&public()), 18).unwrap();
    r.verify_all().unwrap();
    drop(r);

    assert_eq!(
        rekey_file(&path, &key, &one, 10, 18).unwrap(),
        Rekeyed::InPlace
    );
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_than_256_recipients_leave_the_file_untouched() {
    let dir = scratch("257");
    let path = dir.join("m.enct");
    std::fs::write(&path, signed_file()).unwrap();
    let before = std::fs::read(&path).unwrap();
    let key = Credential::key(&KEY).unwrap();
    let too_many: Vec<Recipient> = (0..257u16)
        .map(|i| Recipient::key(&[(i % 256) as u8; 32]).unwrap())
        .collect();
    let err = rekey_file(&path, &key, &too_many, 10, 18).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("256")),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
