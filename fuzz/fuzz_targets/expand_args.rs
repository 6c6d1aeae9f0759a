//! Fuzzes the CLI's argument expansion (`A..B`, `A..=B`, values): it must
//! never panic, never return more than it is allowed, and expand a range
//! into exactly its numbers.

#![no_main]

use drover_common::util::expand_args;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&max, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // Up to 2,550 values: enough to cross the limit, cheap to check.
    let max = usize::from(max) * 10;
    let args: Vec<String> = text.split('\n').map(str::to_string).collect();
    match expand_args(&args, max) {
        Ok(values) => {
            assert!(
                values.len() <= max,
                "{} values over the limit {max}",
                values.len()
            );
            if let [arg] = args.as_slice()
                && let Some((a, b)) = arg.split_once("..")
                && let Ok(start) = a.parse::<u64>()
            {
                let (end, inclusive) = match b.strip_prefix('=') {
                    Some(b) => (b.parse::<u64>().ok(), true),
                    None => (b.parse::<u64>().ok(), false),
                };
                // An empty range (`3..3`, `1..=0`) is fine, as in Python.
                if let Some(end) = end.and_then(|e| e.checked_add(u64::from(inclusive))) {
                    let count = end.saturating_sub(start);
                    assert_eq!(values.len() as u64, count, "{arg}");
                    if let Some(first) = values.first() {
                        assert_eq!(first, &start.to_string());
                    }
                }
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
