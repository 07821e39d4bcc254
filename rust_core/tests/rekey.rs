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

// --- Adding and removing stanzas, keeping the others (issue 13) --------------------------------

use enctensor_core::header::{Member, Stanza};
use enctensor_core::keys::stanzas_of;
use enctensor_core::{change_stanzas, Changes, Removal};

const KEY_B: [u8; 32] = [0x43; 32];
const X_SECRET: [u8; 32] = [0x11; 32];

fn x25519_public(secret: &[u8; 32]) -> Vec<u8> {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let me = PrivateKey::from_private_key(&X25519, secret).unwrap();
    me.compute_public_key().unwrap().as_ref().to_vec()
}

fn opens(path: &std::path::Path, cred: &Credential) -> bool {
    match Reader::open(path, cred, Some(&public()), 18) {
        Ok(r) => {
            r.verify_all().unwrap();
            true
        }
        Err(Error::WrongKey(_)) => false,
        Err(e) => panic!("{e}"),
    }
}

fn stanzas(path: &std::path::Path) -> Vec<Stanza> {
    header::parse_file(&std::fs::read(path).unwrap())
        .unwrap()
        .stanzas
}

fn change(
    path: &std::path::Path,
    remove: &[Removal],
    add: &[Recipient],
) -> Result<(Rekeyed, Vec<Stanza>), Error> {
    let changes = Changes {
        keep: true,
        remove,
        add,
        log_n: 10,
    };
    change_stanzas(path, &Credential::key(&KEY).unwrap(), &changes, 18)
}

#[test]
fn adding_keeps_every_other_stanza_and_removing_takes_only_what_it_names() {
    let dir = scratch("add-remove");
    let path = dir.join("m.enct");
    std::fs::write(&path, signed_file()).unwrap();
    let (a, b) = (
        Credential::key(&KEY).unwrap(),
        Credential::key(&KEY_B).unwrap(),
    );
    let x = Credential::x25519(&X_SECRET).unwrap();
    let x_pub = x25519_public(&X_SECRET);
    let before = stanzas(&path);

    // Add a raw key (no fingerprint) and an X25519 recipient with its fingerprint.
    let add = [
        Recipient::key(&KEY_B).unwrap(),
        Recipient::x25519(&x_pub)
            .unwrap()
            .with_fingerprint()
            .unwrap(),
    ];
    let (how, after) = change(&path, &[], &add).unwrap();
    assert_eq!(how, Rekeyed::InPlace);
    assert_eq!(after, stanzas(&path));
    assert_eq!(after.len(), 3);
    assert_eq!(after[0], before[0], "the kept stanza is unchanged");
    assert_eq!(after[1].fingerprint(), None);
    let x_fp = Recipient::x25519(&x_pub).unwrap().fingerprint().unwrap();
    assert_eq!(after[2].fingerprint(), Some(&x_fp));
    assert!(opens(&path, &a) && opens(&path, &b) && opens(&path, &x));
    // Each key finds its own stanza without any fingerprint; the RSA-free file has no other.
    assert_eq!(stanzas_of(&after, &b).unwrap(), [1]);
    assert_eq!(stanzas_of(&after, &x).unwrap(), [2]);
    let stranger = Credential::key(&[0x99; 32]).unwrap();
    assert!(stanzas_of(&after, &stranger).unwrap().is_empty());

    // Remove the X25519 recipient by its fingerprint: only it loses access.
    let gone = [Removal::Recipient(Recipient::x25519(&x_pub).unwrap())];
    let (_, after) = change(&path, &gone, &[]).unwrap();
    assert_eq!(after.len(), 2);
    assert!(opens(&path, &a) && opens(&path, &b) && !opens(&path, &x));

    // Remove B by its key (found by its commitment), then the first stanza by its position.
    let (_, after) = change(
        &path,
        &[Removal::Holder(Credential::key(&KEY_B).unwrap())],
        &[],
    )
    .unwrap();
    assert_eq!(after, before);
    assert!(opens(&path, &a) && !opens(&path, &b));
    change(&path, &[], &[Recipient::key(&KEY_B).unwrap()]).unwrap();
    let (_, after) = change(&path, &[Removal::Index(0)], &[]).unwrap();
    assert_eq!(after.len(), 1);
    assert!(!opens(&path, &a) && opens(&path, &b));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refusals_change_nothing() {
    let dir = scratch("refusals");
    let path = dir.join("m.enct");
    std::fs::write(&path, signed_file()).unwrap();
    let x_pub = x25519_public(&X_SECRET);
    // An X25519 stanza without a fingerprint.
    change(&path, &[], &[Recipient::x25519(&x_pub).unwrap()]).unwrap();
    let before = std::fs::read(&path).unwrap();
    let refused = |remove: &[Removal], add: &[Recipient], want: &[&str]| {
        let err = change(&path, remove, add).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidArgument(_)), "{msg}");
        for w in want {
            assert!(msg.contains(w), "{w:?} not in {msg}");
        }
        assert!(
            msg.contains("nothing was changed") || msg.contains("nothing to change"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    };
    // A public key cannot find its stanza in a file without fingerprints: say how to proceed.
    refused(
        &[Removal::Recipient(Recipient::x25519(&x_pub).unwrap())],
        &[],
        &[
            "carry no recipient fingerprints",
            "--remove-stanza",
            "--remove-identity",
            "re-encrypt",
        ],
    );
    // Removing every stanza would lock everyone out.
    refused(
        &[Removal::Index(0), Removal::Index(1)],
        &[],
        &["without any stanza", "nobody could open it"],
    );
    refused(&[Removal::Index(2)], &[], &["no stanza 2", "0 to 1"]);
    refused(&[Removal::Passphrase], &[], &["no passphrase"]);
    refused(
        &[Removal::Holder(Credential::key(&KEY_B).unwrap())],
        &[],
        &["raw key given to remove opens no stanza"],
    );
    // A key that already has a kept stanza, or the same recipient twice.
    refused(
        &[],
        &[Recipient::key(&KEY).unwrap()],
        &["already has stanza 0"],
    );
    refused(
        &[],
        &[
            Recipient::key(&KEY_B).unwrap(),
            Recipient::key(&KEY_B).unwrap(),
        ],
        &["given twice"],
    );
    // A passphrase only alone.
    refused(
        &[],
        &[Recipient::passphrase("pw pw pw").unwrap()],
        &["only stanza", "--remove-passphrase", "--replace"],
    );
    refused(&[], &[], &["nothing to change"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_passphrase_is_replaced_by_removing_it_and_unknown_stanzas_are_kept() {
    let dir = scratch("passphrase");
    let path = dir.join("m.enct");
    std::fs::write(&path, signed_file()).unwrap();
    let key = Credential::key(&KEY).unwrap();
    let pw = Credential::passphrase("correct horse").unwrap();
    rekey_file(
        &path,
        &key,
        &[Recipient::passphrase("correct horse").unwrap()],
        10,
        18,
    )
    .unwrap();
    let changes = Changes {
        keep: true,
        remove: &[Removal::Passphrase],
        add: &[Recipient::key(&KEY).unwrap()],
        log_n: 10,
    };
    let (_, after) = change_stanzas(&path, &pw, &changes, 18).unwrap();
    assert!(matches!(after[..], [Stanza::Key { .. }]));
    assert!(opens(&path, &key) && !opens(&path, &pw));

    // A stanza of a type this reader does not know (a future one), put in by hand: a re-key
    // that adds a key keeps it, every member as it was.
    let mut file = std::fs::read(&path).unwrap();
    let h = header::parse_file(&file).unwrap();
    let future = Stanza::Unknown {
        kind: "future".into(),
        members: vec![
            ("type".into(), Member::Str("future".into())),
            ("n".into(), Member::Int(7)),
            ("text".into(), Member::Str("é \"quoted\"".into())),
        ],
    };
    let json = enctensor_core::writer::stanza_area_json(
        &[h.stanzas[0].clone(), future.clone()],
        h.signature.as_ref(),
    );
    let area = enctensor_core::writer::padded_area(&json, h.stanza_area_len);
    file[32..32 + area.len()].copy_from_slice(&area);
    std::fs::write(&path, &file).unwrap();
    assert_eq!(stanzas(&path)[1], future);
    let (_, after) = change(&path, &[], &[Recipient::key(&KEY_B).unwrap()]).unwrap();
    assert_eq!(after[1], future);
    assert_eq!(stanzas(&path), after);
    assert!(opens(&path, &Credential::key(&KEY_B).unwrap()));
    // It can be removed by its position only.
    let (_, after) = change(&path, &[Removal::Index(1)], &[]).unwrap();
    assert!(!after.contains(&future));
    std::fs::remove_dir_all(&dir).unwrap();
}
