//! Opens arbitrary bytes with the fixed test key of `spec/vectors` (`bytes(range(32))`), so
//! that mutations of the valid seed files reach stanza unwrapping, the header MAC and chunk
//! decryption; then reads every tensor, some byte ranges, and verifies every chunk. Any
//! outcome but a panic (or a hang, or unbounded memory) is fine.
#![no_main]

use enctensor_core::reader::DEFAULT_MAX_SCRYPT_LOG_N;
use enctensor_core::{Credential, Reader};
use libfuzzer_sys::fuzz_target;

/// `bytes(range(32))`: the key of the success vectors in spec/vectors.
const FIXED_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

/// Total plaintext the target allocates for one input.
const MAX_TOTAL: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let cred = Credential::key(&FIXED_KEY).expect("32-byte key");
    let Ok(reader) = Reader::from_bytes(data.to_vec(), &cred, None, DEFAULT_MAX_SCRYPT_LOG_N)
    else {
        return;
    };
    let tensors = reader.header().tensors.clone();
    let total = tensors
        .iter()
        .try_fold(0u64, |acc, t| acc.checked_add(t.nbytes()));
    if total.is_some_and(|n| n <= MAX_TOTAL) {
        let mut bufs: Vec<Vec<u8>> = tensors
            .iter()
            .map(|t| vec![0u8; t.nbytes() as usize])
            .collect();
        let mut jobs: Vec<(usize, &mut [u8])> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (i, b.as_mut_slice()))
            .collect();
        let all = reader.read_many(&mut jobs);
        if all.is_err() {
            // Nothing is released from a failed call.
            assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 0)));
        }
        // A few ranges: the first and last bytes of each tensor, and a chunk-straddling one.
        let cs = reader.header().chunk_size;
        for (i, t) in tensors.iter().enumerate().take(8) {
            let n = t.nbytes();
            let straddle = cs.saturating_sub(7).min(n);
            let ranges = [
                (0, n.min(3)),
                (n.saturating_sub(5), n.min(5)),
                (straddle, 14.min(n - straddle)),
            ];
            for (start, len) in ranges {
                let mut out = vec![0u8; len as usize];
                let r = reader.read_range_into(i, start, &mut out);
                match (&r, &all) {
                    // A range of a file that decrypted whole gives the same bytes.
                    (Ok(()), Ok(())) => {
                        let s = start as usize;
                        assert_eq!(&bufs[i][s..s + out.len()], &out[..]);
                    }
                    (Err(e), Ok(())) => panic!("range read failed on a file that reads: {e}"),
                    (Err(_), Err(_)) => assert!(out.iter().all(|&x| x == 0)),
                    (Ok(()), Err(_)) => {}
                }
            }
        }
        // An out-of-range read is an error, not a panic.
        if let Some(t) = tensors.first() {
            let mut out = [0u8; 1];
            assert!(reader.read_range_into(0, t.nbytes(), &mut out).is_err());
        }
        let verified = reader.verify_all();
        assert_eq!(verified.is_ok(), all.is_ok());
    } else {
        let _ = reader.verify_all();
    }
});
