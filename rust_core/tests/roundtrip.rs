//! Write/read round trips and tamper detection through the public Rust API.

use std::io::Cursor;

use enctensor_core::{
    header, rekey_file, write_to, Credential, Dtype, Error, Reader, Recipient, Rekeyed,
    TensorSource, WriteOptions,
};

const KEY: [u8; 32] = [0x42; 32];

/// (name, dtype, shape, bytes, encrypted)
type Spec = (String, Dtype, Vec<u64>, Vec<u8>, bool);

fn sample() -> Vec<Spec> {
    let big: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ("w".into(), Dtype::F32, vec![2, 3], (0..24).collect(), true),
        (
            "scalar".into(),
            Dtype::F64,
            vec![],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            true,
        ),
        ("empty".into(), Dtype::I16, vec![0, 5], vec![], true),
        ("big".into(), Dtype::U8, vec![big.len() as u64], big, true),
        (
            "clear".into(),
            Dtype::BF16,
            vec![3],
            vec![9, 8, 7, 6, 5, 4],
            false,
        ),
    ]
}

fn write(tensors: &[Spec], creds: Vec<Recipient>) -> Vec<u8> {
    write_signed(tensors, creds, None)
}

fn write_signed(tensors: &[Spec], creds: Vec<Recipient>, sign_seed: Option<[u8; 32]>) -> Vec<u8> {
    write_with(tensors, creds, sign_seed, 10)
}

fn write_with(
    tensors: &[Spec],
    creds: Vec<Recipient>,
    sign_seed: Option<[u8; 32]>,
    log_n: u8,
) -> Vec<u8> {
    let sources: Vec<TensorSource> = tensors
        .iter()
        .map(|(n, d, s, b, e)| TensorSource {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
            data: b,
            encrypted: *e,
        })
        .collect();
    let opts = WriteOptions {
        chunk_size: 4096,
        metadata: vec![("k".into(), "v".into())],
        recipients: creds,
        log_n,
        sign_seed: sign_seed.map(zeroize::Zeroizing::new),
    };
    let mut cur = Cursor::new(Vec::new());
    write_to(&mut cur, &sources, &opts).unwrap();
    cur.into_inner()
}

fn read_all(file: Vec<u8>, cred: &Credential) -> Result<Vec<Vec<u8>>, Error> {
    let r = Reader::from_bytes(file, cred, None, 18)?;
    let mut outs: Vec<Vec<u8>> = r
        .header()
        .tensors
        .iter()
        .map(|t| vec![0u8; t.nbytes() as usize])
        .collect();
    let mut jobs: Vec<(usize, &mut [u8])> = outs
        .iter_mut()
        .enumerate()
        .map(|(i, o)| (i, o.as_mut_slice()))
        .collect();
    r.read_many(&mut jobs)?;
    Ok(outs)
}

#[test]
fn round_trip_every_shape_kind() {
    let t = sample();
    let file = write(&t, vec![Recipient::key(&KEY).unwrap()]);
    let outs = read_all(file, &Credential::key(&KEY).unwrap()).unwrap();
    for ((_, _, _, want, _), got) in t.iter().zip(&outs) {
        assert_eq!(want, got);
    }
}

#[test]
fn any_of_several_keys_opens_and_others_do_not() {
    let t = sample();
    let creds = vec![
        Recipient::key(&[1; 32]).unwrap(),
        Recipient::key(&[2; 32]).unwrap(),
    ];
    let file = write(&t, creds);
    assert!(read_all(file.clone(), &Credential::key(&[2; 32]).unwrap()).is_ok());
    assert!(matches!(
        read_all(file, &Credential::key(&[3; 32]).unwrap()),
        Err(Error::WrongKey(_))
    ));
}

#[test]
fn passphrase_round_trip() {
    let t = sample();
    let file = write(&t, vec![Recipient::passphrase("hunter2 hunter2").unwrap()]);
    assert!(read_all(
        file.clone(),
        &Credential::passphrase("hunter2 hunter2").unwrap()
    )
    .is_ok());
    assert!(matches!(
        read_all(file, &Credential::passphrase("hunter3").unwrap()),
        Err(Error::WrongKey(_))
    ));
}

/// Flipping any single bit of the file must fail with a typed error and release nothing.
#[test]
fn every_flipped_bit_is_detected() {
    let t = sample();
    let file = write(&t, vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    let h = header::parse_file(&file).unwrap();
    let mut kinds = [0usize; 3];
    // Every byte of the preamble, header, MAC and tag table, and a stride through the data.
    let positions =
        (0..h.data_offset as usize).chain((h.data_offset as usize..file.len()).step_by(97));
    for pos in positions {
        for bit in [0u8, 7] {
            let mut bad = file.clone();
            bad[pos] ^= 1 << bit;
            match read_all(bad, &cred) {
                Ok(_) => panic!("flipped bit {bit} of byte {pos} went unnoticed"),
                Err(Error::Format(_)) => kinds[0] += 1,
                Err(Error::WrongKey(_)) => kinds[1] += 1,
                Err(Error::Integrity(_)) => kinds[2] += 1,
                Err(e) => panic!("unexpected error kind at byte {pos}: {e}"),
            }
        }
    }
    assert!(kinds[2] > 0 && kinds[0] > 0 && kinds[1] > 0, "{kinds:?}");
}

#[test]
fn truncation_and_trailing_bytes_are_format_errors() {
    let file = write(&sample(), vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    for cut in [0, 10, 24, 100, file.len() / 2, file.len() - 1] {
        assert!(
            matches!(read_all(file[..cut].to_vec(), &cred), Err(Error::Format(_))),
            "cut {cut}"
        );
    }
    let mut longer = file;
    longer.push(0);
    assert!(matches!(read_all(longer, &cred), Err(Error::Format(_))));
}

#[test]
fn ranges_verify_only_their_chunks() {
    let t = sample();
    let mut file = write(&t, vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    let r = Reader::from_bytes(file.clone(), &cred, None, 18).unwrap();
    let big = &t[3].3;
    for (start, len) in [
        (0usize, 1usize),
        (4000, 200),
        (4096, 4096),
        (5000, 7000),
        (12_000, 388),
    ] {
        let mut out = vec![0u8; len];
        r.read_range_into(3, start as u64, &mut out).unwrap();
        assert_eq!(&out[..], &big[start..start + len]);
    }
    // Corrupt the last chunk of "big": ranges in earlier chunks still read, the last fails.
    let bt = &r.header().tensors[3];
    let last = (r.header().data_offset + bt.end - 1) as usize;
    file[last] ^= 1;
    let r = Reader::from_bytes(file, &cred, None, 18).unwrap();
    let mut out = vec![0u8; 100];
    r.read_range_into(3, 0, &mut out).unwrap();
    let mut out = vec![0u8; 10];
    assert!(matches!(
        r.read_range_into(3, 12_300, &mut out),
        Err(Error::Integrity(_))
    ));
    assert!(
        out.iter().all(|&b| b == 0),
        "nothing is released from a failed chunk"
    );
    assert!(matches!(r.verify_all(), Err(Error::Integrity(_))));
}

/// A file truncated under an open map gives a typed error, not SIGBUS.
#[test]
fn truncated_under_the_map_is_a_format_error() {
    let t: Vec<Spec> = vec![(
        "big".into(),
        Dtype::U8,
        vec![1 << 20],
        vec![7u8; 1 << 20],
        true,
    )];
    let path = std::env::temp_dir().join(format!("enct-trunc-{}.enct", std::process::id()));
    std::fs::write(&path, write(&t, vec![Recipient::key(&KEY).unwrap()])).unwrap();
    let r = Reader::open(&path, &Credential::key(&KEY).unwrap(), None, 18).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let mut out = vec![0u8; 1 << 20];
    let err = r.read_into(0, &mut out).unwrap_err();
    assert!(
        matches!(err, Error::Format(ref m) if m.contains("truncated")),
        "{err}"
    );
    assert!(out.iter().all(|&b| b == 0));
    drop(r);
    std::fs::remove_file(&path).unwrap();
}

const SEED: [u8; 32] = [7u8; 32];

fn public_of(seed: &[u8; 32]) -> Vec<u8> {
    ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes()
        .to_vec()
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn signatures_verify_only_with_the_publisher_key() {
    let public = public_of(&SEED);
    let other = public_of(&[8u8; 32]);
    let cred = Credential::key(&KEY).unwrap();
    let signed = write_signed(&sample(), vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    let h = header::parse_file(&signed).unwrap();
    assert!(h.chunk_digest && h.signature.is_some());
    assert_eq!(h.tables_end(), h.tags_end() + 32 * h.n_tags);
    assert_eq!(h.data_offset, h.tables_end().div_ceil(4096) * 4096);
    let r = Reader::from_bytes(signed.clone(), &cred, Some(&public), 18).unwrap();
    r.verify_all().unwrap();
    let t = sample();
    for (i, (_, _, _, want, _)) in t.iter().enumerate() {
        let mut out = vec![0u8; want.len()];
        r.read_into(i, &mut out).unwrap();
        assert_eq!(&out, want);
    }
    let mut out = vec![0u8; 5000];
    r.read_range_into(3, 4000, &mut out).unwrap();
    assert_eq!(&out[..], &t[3].3[4000..9000]);
    assert!(Reader::from_bytes(signed.clone(), &cred, None, 18).is_ok());
    assert!(matches!(
        Reader::from_bytes(signed, &cred, Some(&other), 18),
        Err(Error::Signature(_))
    ));
    let unsigned = write(&sample(), vec![Recipient::key(&KEY).unwrap()]);
    let uh = header::parse_file(&unsigned).unwrap();
    assert!(!uh.chunk_digest && uh.signature.is_none());
    let err = Reader::from_bytes(unsigned, &cred, Some(&public), 18)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Signature(ref m) if m.contains("not signed")),
        "{err}"
    );
    // A verification key of the wrong length is a caller error.
    let signed = write_signed(&sample(), vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    assert!(matches!(
        Reader::from_bytes(signed, &cred, Some(&public[..31]), 18),
        Err(Error::InvalidArgument(_))
    ));
}

/// The file key of a file with one `key` stanza for `key`, computed from the spec's equations
/// (FORMAT.md, "Stanzas"), as a key holder can.
fn file_key_of(file: &[u8], key: &[u8; 32]) -> [u8; 32] {
    use enctensor_core::crypto::{hkdf, GcmKey};
    let h = header::parse_file(file).unwrap();
    let (salt, body) = match &h.stanzas[0] {
        enctensor_core::Stanza::Key { salt, body, .. } => (*salt, *body),
        other => panic!("not a key stanza: {other:?}"),
    };
    let wrap = hkdf(key, &salt, &[b"enctensor.v1 key"]);
    let commit = hkdf(&wrap[..], &[], &[b"enctensor.v1 stanza commitment"]);
    assert_eq!(
        commit[..],
        body[..32],
        "the body starts with the commitment"
    );
    let seal = hkdf(&wrap[..], &[], &[b"enctensor.v1 stanza seal"]);
    let mut fk = [0u8; 32];
    assert!(GcmKey::new(&seal).open_into([0; 12], b"", &body[32..64], &body[64..], &mut fk));
    fk
}

/// Replaces the stanza area of `file` by `json` padded to the same length.
fn with_area(file: &[u8], json: &str) -> Vec<u8> {
    let h = header::parse_file(file).unwrap();
    let mut out = file.to_vec();
    let area = &mut out[32..32 + h.stanza_area_len as usize];
    assert!(json.len() <= area.len());
    area.fill(b' ');
    area[..json.len()].copy_from_slice(json.as_bytes());
    out
}

/// Changes entry `k` of the digest table of a signed file and makes everything else valid
/// again with the file key and the publisher's seed: the MAC, the signature and every GCM tag
/// verify, only the digest of chunk `k` does not match its stored bytes.
fn with_wrong_digest(file: &[u8], k: u64) -> Vec<u8> {
    use enctensor_core::{crypto, keys};
    let fk = file_key_of(file, &KEY);
    let h = header::parse_file(file).unwrap();
    let mut out = file.to_vec();
    let at = (h.digests_offset() + 32 * k) as usize;
    out[at] ^= 0x55;
    let (ho, mo) = (h.header_offset() as usize, h.mac_offset() as usize);
    let tags = out[h.tags_offset() as usize..h.tags_end() as usize].to_vec();
    let digests = out[h.digests_offset() as usize..h.tables_end() as usize].to_vec();
    let mac = crypto::header_mac(&fk, &[&out[ho..mo], &tags, &digests]);
    out[mo..mo + 32].copy_from_slice(&mac);
    let sig = keys::sign(
        &SEED,
        &keys::signed_message(&out[ho..mo], &mac, &tags, &digests),
    )
    .unwrap();
    let area = String::from_utf8(out[32..ho].to_vec()).unwrap();
    let old_sig = hexs(&h.signature.unwrap());
    let area = area.trim_end().replace(&old_sig, &hexs(&sig));
    with_area(&out, &area)
}

#[test]
fn a_digest_mismatch_is_a_payload_failure_only_with_a_verification_key() {
    let t = sample();
    let signed = write_signed(&t, vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    let h = header::parse_file(&signed).unwrap();
    let big = &h.tensors[3];
    // Chunk 1 of tensor "big" (bytes 4096..8192).
    let k = big.first_tag + 1;
    let bad = with_wrong_digest(&signed, k);
    let cred = Credential::key(&KEY).unwrap();
    let public = public_of(&SEED);
    // Without a verification key the digests are not checked: MAC and tags are valid.
    let plain = Reader::from_bytes(bad.clone(), &cred, None, 18).unwrap();
    plain.verify_all().unwrap();
    let mut out = vec![0u8; big.nbytes() as usize];
    plain.read_into(3, &mut out).unwrap();
    assert_eq!(out, t[3].3);
    // With it: the signature verifies (header is fine), the chunk read fails.
    let r = Reader::from_bytes(bad, &cred, Some(&public), 18).unwrap();
    let mut out = vec![0u8; big.nbytes() as usize];
    let err = r.read_into(3, &mut out).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Integrity(_)), "{msg}");
    assert!(
        msg.contains("\"big\"") && msg.contains("chunk 1 of 4") && msg.contains("BLAKE3"),
        "{msg}"
    );
    assert!(out.iter().all(|&b| b == 0), "nothing released");
    let mut jobs: Vec<(usize, &mut [u8])> = vec![(3, &mut out[..])];
    assert!(matches!(r.read_many(&mut jobs), Err(Error::Integrity(_))));
    // A slice touching only chunk 0 reads; one touching chunk 1 fails.
    let mut piece = vec![0u8; 100];
    r.read_range_into(3, 0, &mut piece).unwrap();
    assert_eq!(&piece[..], &t[3].3[..100]);
    let mut piece = vec![0u8; 10];
    assert!(matches!(
        r.read_range_into(3, 5000, &mut piece),
        Err(Error::Integrity(_))
    ));
    assert!(piece.iter().all(|&b| b == 0));
    assert!(matches!(r.verify_all(), Err(Error::Integrity(_))));
    // Other tensors still read.
    let mut w = vec![0u8; 24];
    r.read_into(0, &mut w).unwrap();
    assert_eq!(w, t[0].3);
}

#[test]
fn changed_stored_bytes_fail_at_the_digest_before_decryption() {
    let t = sample();
    let signed = write_signed(&t, vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    let h = header::parse_file(&signed).unwrap();
    let cred = Credential::key(&KEY).unwrap();
    let public = public_of(&SEED);
    for (i, ti) in h.tensors.iter().enumerate() {
        if ti.nbytes() == 0 {
            continue;
        }
        let mut bad = signed.clone();
        bad[(h.data_offset + ti.begin) as usize] ^= 1;
        let r = Reader::from_bytes(bad.clone(), &cred, Some(&public), 18).unwrap();
        let mut out = vec![0u8; ti.nbytes() as usize];
        let err = r.read_into(i, &mut out).unwrap_err();
        assert!(
            matches!(err, Error::Integrity(ref m) if m.contains("BLAKE3")),
            "{}: {err}",
            ti.name
        );
        // Without the key the GCM tag catches it.
        let r = Reader::from_bytes(bad, &cred, None, 18).unwrap();
        let err = r.read_into(i, &mut out).unwrap_err();
        assert!(
            matches!(err, Error::Integrity(ref m) if m.contains("failed authentication")),
            "{err}"
        );
    }
}

/// Every single bit flipped in a signed file fails (format, no match, header or payload
/// failure) when it is read with the verification key.
#[test]
fn every_flipped_bit_of_a_signed_file_is_detected() {
    let t = sample();
    let file = write_signed(&t, vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    let cred = Credential::key(&KEY).unwrap();
    let public = public_of(&SEED);
    let h = header::parse_file(&file).unwrap();
    let mut kinds = [0usize; 4];
    let positions =
        (0..h.data_offset as usize).chain((h.data_offset as usize..file.len()).step_by(89));
    for pos in positions {
        let mut bad = file.clone();
        bad[pos] ^= 0x10;
        let got = Reader::from_bytes(bad, &cred, Some(&public), 18).and_then(|r| r.verify_all());
        match got {
            Ok(()) => panic!("flipped byte {pos} went unnoticed"),
            Err(Error::Format(_)) => kinds[0] += 1,
            Err(Error::WrongKey(_)) => kinds[1] += 1,
            Err(Error::Signature(_)) => kinds[2] += 1,
            Err(Error::Integrity(_)) => kinds[3] += 1,
            Err(e) => panic!("unexpected error kind at byte {pos}: {e}"),
        }
    }
    // A flipped bit makes the hex of the signature invalid (a format failure); another valid
    // hex digit anywhere in it is a header failure.
    let sig_hex = hexs(&h.signature.unwrap());
    let at = file
        .windows(sig_hex.len())
        .position(|w| w == sig_hex.as_bytes())
        .unwrap();
    for pos in at..at + sig_hex.len() {
        let mut bad = file.clone();
        bad[pos] = if bad[pos] == b'0' { b'1' } else { b'0' };
        match Reader::from_bytes(bad, &cred, Some(&public), 18) {
            Err(Error::Signature(_)) => kinds[2] += 1,
            other => panic!("signature digit {pos}: {:?}", other.err()),
        }
    }
    assert!(kinds.iter().all(|&n| n > 0), "{kinds:?}");
}

/// A small-order verification key is refused, even with the signature it would accept: the
/// identity key and `(R = identity, S = 0)`, written into the stanza area (which no MAC covers).
#[test]
fn a_small_order_verification_key_is_refused() {
    let signed = write_signed(&sample(), vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    let h = header::parse_file(&signed).unwrap();
    let mut forged = [0u8; 64];
    forged[0] = 1;
    let area = String::from_utf8(signed[32..h.header_offset() as usize].to_vec()).unwrap();
    let area = area
        .trim_end()
        .replace(&hexs(&h.signature.unwrap()), &hexs(&forged));
    let file = with_area(&signed, &area);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let cred = Credential::key(&KEY).unwrap();
    let err = Reader::from_bytes(file.clone(), &cred, Some(&identity), 18)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Signature(_)), "{msg}");
    assert!(
        msg.contains("small-order") && msg.contains("unusable"),
        "{msg}"
    );
    // The genuine key refuses the forged signature.
    assert!(matches!(
        Reader::from_bytes(file, &cred, Some(&public_of(&SEED)), 18),
        Err(Error::Signature(_))
    ));
}

#[test]
fn a_signature_without_chunk_digest_and_the_old_type_are_format_failures() {
    let signed = write_signed(&sample(), vec![Recipient::key(&KEY).unwrap()], Some(SEED));
    let h = header::parse_file(&signed).unwrap();
    let area = String::from_utf8(signed[32..h.header_offset() as usize].to_vec()).unwrap();
    let old = area.trim_end().replace("\"ed25519-blake3\"", "\"ed25519\"");
    let file = with_area(&signed, &old);
    assert!(matches!(header::parse_file(&file), Err(Error::Format(_))));
    // Moving the signature onto an unsigned file (no digest table).
    let unsigned = write(&sample(), vec![Recipient::key(&KEY).unwrap()]);
    let uh = header::parse_file(&unsigned).unwrap();
    let uarea = String::from_utf8(unsigned[32..uh.header_offset() as usize].to_vec()).unwrap();
    let sig_member = &area.trim_end()[area.find(",\"signature\"").unwrap()..];
    let moved = format!(
        "{}{}",
        &uarea.trim_end()[..uarea.trim_end().len() - 1],
        sig_member
    );
    let file = with_area(&unsigned, &moved);
    let err = header::parse_file(&file).unwrap_err();
    assert!(
        matches!(err, Error::Format(ref m) if m.contains("chunk_digest")),
        "{err}"
    );
}

#[test]
fn layout_is_canonical() {
    let file = write(&sample(), vec![Recipient::key(&KEY).unwrap()]);
    let cred = Credential::key(&KEY).unwrap();
    let h = header::parse_file(&file).unwrap();
    assert_eq!(h.stanza_area_len, 4064);
    // One more page between the tables and the data, data_offset moved along: valid MAC and
    // tags, but no longer canonical.
    let mut far = file[..h.data_offset as usize].to_vec();
    far.extend(std::iter::repeat_n(0u8, 4096));
    far.extend_from_slice(&file[h.data_offset as usize..]);
    far[24..32].copy_from_slice(&(h.data_offset + 4096).to_le_bytes());
    assert!(matches!(read_all(far, &cred), Err(Error::Format(_))));
    // A grown stanza area (one more page of spaces, everything after moved): not canonical.
    let mut grown = file[..32 + 4064].to_vec();
    grown.extend(std::iter::repeat_n(b' ', 4096));
    grown.extend_from_slice(&file[32 + 4064..]);
    grown[12..16].copy_from_slice(&(4064u32 + 4096).to_le_bytes());
    grown[24..32].copy_from_slice(&(h.data_offset + 4096).to_le_bytes());
    let err = read_all(grown, &cred).unwrap_err();
    assert!(
        matches!(err, Error::Format(ref m) if m.contains("stanza area")),
        "{err}"
    );
}

#[test]
fn the_scrypt_cost_cap_is_the_callers() {
    let t = sample();
    let file = write_with(
        &t,
        vec![Recipient::passphrase("hunter2 hunter2").unwrap()],
        None,
        11,
    );
    let cred = Credential::passphrase("hunter2 hunter2").unwrap();
    let err = Reader::from_bytes(file.clone(), &cred, None, 10)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Format(_)), "{msg}");
    assert!(
        msg.contains("max_scrypt_log_n") && msg.contains("--max-scrypt-log-n"),
        "{msg}"
    );
    assert!(Reader::from_bytes(file.clone(), &cred, None, 11).is_ok());
    assert!(Reader::from_bytes(file.clone(), &cred, None, 18).is_ok());
    for bad in [9u8, 21] {
        assert!(matches!(
            Reader::from_bytes(file.clone(), &cred, None, bad),
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[test]
fn writers_refuse_more_than_256_stanzas() {
    let t = sample();
    let sources: Vec<TensorSource> = t
        .iter()
        .map(|(n, d, s, b, e)| TensorSource {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
            data: b,
            encrypted: *e,
        })
        .collect();
    let recipients = |n: usize| -> Vec<Recipient> {
        (0..n)
            .map(|i| Recipient::key(&[(i % 251) as u8; 32]).unwrap())
            .collect()
    };
    let opts = WriteOptions {
        chunk_size: 4096,
        recipients: recipients(257),
        log_n: 10,
        ..WriteOptions::default()
    };
    let mut cur = Cursor::new(Vec::new());
    assert!(matches!(
        write_to(&mut cur, &sources, &opts),
        Err(Error::InvalidArgument(_))
    ));
    assert!(cur.into_inner().is_empty(), "nothing written");
    let opts = WriteOptions {
        recipients: recipients(256),
        ..opts
    };
    let mut cur = Cursor::new(Vec::new());
    write_to(&mut cur, &sources, &opts).unwrap();
    let file = cur.into_inner();
    let h = header::parse_file(&file).unwrap();
    assert_eq!(h.stanzas.len(), 256);
    assert_eq!(
        h.stanza_area_len,
        header::canonical_area_len(
            String::from_utf8_lossy(&file[32..h.header_offset() as usize])
                .trim_end()
                .len() as u64
        )
    );
    assert!(read_all(file, &Credential::key(&[255 % 251; 32]).unwrap()).is_ok());
}

#[test]
fn rekey_in_place_and_by_rewrite() {
    let dir = std::env::temp_dir().join(format!("enct-rekey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.enct");
    let t = sample();
    std::fs::write(
        &path,
        write_signed(&t, vec![Recipient::key(&KEY).unwrap()], Some([7u8; 32])),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let old = Credential::key(&KEY).unwrap();
    let new = [9u8; 32];
    let how = rekey_file(&path, &old, &[Recipient::key(&new).unwrap()], 10, 18).unwrap();
    assert_eq!(how, Rekeyed::InPlace);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[4096..],
        after[4096..],
        "nothing past the first page changes"
    );
    assert!(matches!(
        Reader::open(&path, &old, None, 18),
        Err(Error::WrongKey(_))
    ));
    let r = Reader::open(&path, &Credential::key(&new).unwrap(), None, 18).unwrap();
    let mut out = vec![0u8; t[3].3.len()];
    r.read_into(3, &mut out).unwrap();
    assert_eq!(out, t[3].3);
    drop(r);
    // 100 recipients do not fit in the first page: the file is rewritten, tensors untouched.
    let many: Vec<Recipient> = (0..100u8)
        .map(|i| Recipient::key(&[i; 32]).unwrap())
        .collect();
    let how = rekey_file(&path, &Credential::key(&new).unwrap(), &many, 10, 18).unwrap();
    assert_eq!(how, Rekeyed::Rewritten);
    let rewritten = std::fs::read(&path).unwrap();
    let h = header::parse_file(&rewritten).unwrap();
    assert!(h.stanza_area_len > 4064 && h.stanzas.len() == 100);
    let old_h = header::parse_file(&after).unwrap();
    assert_eq!(
        rewritten[h.data_offset as usize..],
        after[old_h.data_offset as usize..]
    );
    let r = Reader::open(&path, &Credential::key(&[42u8; 32]).unwrap(), None, 18).unwrap();
    r.verify_all().unwrap();
    drop(r);
    std::fs::remove_dir_all(&dir).unwrap();
}
