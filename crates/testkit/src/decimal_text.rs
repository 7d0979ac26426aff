//! Test oracles for exact money, computed on decimal *text* alone and
//! sharing no code with `tally-money`: how OpenRouter's JavaScript backend
//! prints a double, the exact decimal that text denotes, and schoolbook
//! addition of plain decimals.
//!
//! `f64` appears here only to produce literal text the way JavaScript does
//! (Rust's shortest round-trip digits are the digits JavaScript prints); an
//! expected value is always derived from that text, never from the double.
#![allow(clippy::float_arithmetic)]

/// The shortest round-trip digits of `x` and its decimal exponent:
/// `x = d.ddd… × 10^exp`.
pub fn shortest(x: f64) -> (String, i32) {
    let s = format!("{x:e}");
    let (m, e) = s.split_once('e').expect("{:e} has an exponent");
    (m.replace('.', ""), e.parse().expect("exponent digits"))
}

/// `String(x)` in JavaScript (ECMAScript Number::toString) for `x > 0`.
pub fn js_string(x: f64) -> String {
    let (digits, exp) = shortest(x);
    let k = digits.len() as i32;
    let n = exp + 1; // x = 0.ddd × 10^n
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e < 0 { '-' } else { '+' };
        format!("{}e{sign}{}", mantissa(&digits), e.abs())
    }
}

/// Python's `repr(x)` (what `1.4999999999999999e-05` looks like): exponent
/// form below 1e-4 and from 1e16, at least two exponent digits.
pub fn python_repr(x: f64) -> String {
    let (digits, exp) = shortest(x);
    if (-4..16).contains(&exp) {
        return js_string(x);
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{}e{sign}{:02}", mantissa(&digits), exp.abs())
}

/// `d` or `d.ddd`: the mantissa of an exponent form.
fn mantissa(digits: &str) -> String {
    if digits.len() == 1 {
        digits.to_owned()
    } else {
        format!("{}.{}", &digits[..1], &digits[1..])
    }
}

/// The exact plain decimal denoted by `digits × 10^(exp - len + 1)`.
pub fn exact_plain(digits: &str, exp: i32) -> String {
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let point = exp + 1; // digits before the decimal point
    let k = digits.len() as i32;
    if point >= k {
        format!("{digits}{}", "0".repeat((point - k) as usize))
    } else if point > 0 {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    } else {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    }
}

/// The exact plain decimal that JavaScript's text for `x` denotes.
pub fn exact_plain_of(x: f64) -> String {
    let (digits, exp) = shortest(x);
    exact_plain(&digits, exp)
}

/// Schoolbook addition of non-negative plain decimals (`"12.5"`, `"0.001"`),
/// in canonical form: no leading zeros, no trailing fractional zeros.
pub fn add(a: &str, b: &str) -> String {
    let split = |s: &str| match s.split_once('.') {
        Some((i, f)) => (i.to_owned(), f.to_owned()),
        None => (s.to_owned(), String::new()),
    };
    let ((ai, af), (bi, bf)) = (split(a), split(b));
    let fl = af.len().max(bf.len());
    let il = ai.len().max(bi.len());
    let x = format!("{ai:0>il$}{af:0<fl$}");
    let y = format!("{bi:0>il$}{bf:0<fl$}");
    let mut out = Vec::with_capacity(il + fl + 1);
    let mut carry = 0u8;
    for (p, q) in x.bytes().rev().zip(y.bytes().rev()) {
        let s = (p - b'0') + (q - b'0') + carry;
        out.push(b'0' + s % 10);
        carry = s / 10;
    }
    if carry > 0 {
        out.push(b'0' + carry);
    }
    out.reverse();
    let all = String::from_utf8(out).expect("ASCII digits");
    let (int, frac) = all.split_at(all.len() - fl);
    let int = match int.trim_start_matches('0') {
        "" => "0",
        i => i,
    };
    match frac.trim_end_matches('0') {
        "" => int.to_owned(),
        f => format!("{int}.{f}"),
    }
}
