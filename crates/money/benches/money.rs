//! `Usd` (i128 at scale 28) against `rust_decimal::Decimal` on the same
//! inputs: parsing OpenRouter cost literals, printing, and summing.
//!
//! Run: `cargo bench -p tally-money --bench money`. Plain `Instant`
//! timing over a fixed set of 200 000 inputs, best of 5 runs.
#![allow(missing_docs, clippy::float_arithmetic)]

use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

use rust_decimal::Decimal;
use tally_money::{parse_decimal_str, parse_json_number, to_decimal_string, Usd};

const N: usize = 200_000;

fn best<F: FnMut()>(mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e9 / N as f64
}

fn main() {
    // 17-significant-digit costs at scales 13..=25 (below 10 000 USD each,
    // so that N of them sum inside the money range; Decimal holds them
    // too), as plain decimal strings: the inputs both types accept.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let texts: Vec<String> = (0..N)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let m = x % 100_000_000_000_000_000;
            let scale = 13 + (i % 13) as u32;
            Decimal::new(m as i64, scale).normalize().to_string()
        })
        .collect();
    let usd: Vec<Usd> = texts
        .iter()
        .map(|t| parse_decimal_str(t).unwrap())
        .collect();
    let dec: Vec<Decimal> = texts
        .iter()
        .map(|t| Decimal::from_str(t).unwrap())
        .collect();

    let p_usd = best(|| {
        for t in &texts {
            black_box(parse_json_number(black_box(t)).unwrap());
        }
    });
    let p_dec = best(|| {
        for t in &texts {
            black_box(Decimal::from_str(black_box(t)).unwrap());
        }
    });
    let f_usd = best(|| {
        for v in &usd {
            black_box(to_decimal_string(black_box(v)));
        }
    });
    let f_dec = best(|| {
        for v in &dec {
            black_box(black_box(v).normalize().to_string());
        }
    });
    let s_usd = best(|| {
        black_box(Usd::try_sum(black_box(&usd).iter().copied()).unwrap());
    });
    let s_dec = best(|| {
        let mut t = Decimal::ZERO;
        for v in black_box(&dec) {
            t = t.checked_add(*v).unwrap();
        }
        black_box(t);
    });
    println!("per operation, ns (best of 5 over {N} inputs)");
    println!("{:<28}{:>12}{:>14}", "operation", "Usd (i128)", "Decimal");
    println!(
        "{:<28}{:>12.1}{:>14.1}",
        "parse JSON number text", p_usd, p_dec
    );
    println!(
        "{:<28}{:>12.1}{:>14.1}",
        "format decimal string", f_usd, f_dec
    );
    println!(
        "{:<28}{:>12.1}{:>14.1}",
        "add (exact, checked)", s_usd, s_dec
    );
}
