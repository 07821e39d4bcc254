//! Parses arbitrary bytes as an enctensor file, without a key: everything that runs before
//! any key is known (preamble, stanza area, header JSON, layout, padding) must return an
//! error or a header, never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = enctensor_core::header::parse_file(data) {
        // A header that parses describes exactly this file.
        assert_eq!(h.file_len(), data.len() as u64);
        assert!(h.tags_end() <= h.tables_end() && h.tables_end() <= h.data_offset);
        assert_eq!(h.data_offset, h.tables_end().div_ceil(4096) * 4096);
        assert!(h.signature.is_none() || h.chunk_digest);
        for t in &h.tensors {
            assert!(t.begin <= t.end && t.end <= h.file_len() - h.data_offset);
        }
    }
});
