//! JSON written the way Home Assistant's `mqtt_statestream` writes attribute
//! values: Python's `json.dumps(value, cls=JSONEncoder)` with its defaults.
//!
//! That is `", "` and `": "` between items, every character outside
//! printable ASCII escaped as `\uXXXX` (lowercase hex, surrogate pairs
//! above U+FFFF), and floats as Python's `repr`: the shortest digits that
//! read back, `20.0` for a whole number, an exponent with a sign and at
//! least two digits below 1e-4 and from 1e16 (`1e-05`, `1e+16`). Objects
//! keep their order. Pure.
//!
//! The values come from HA's websocket, already JSON: a datetime arrives as
//! the `isoformat()` string HA's encoder would write, a set or tuple as a
//! list. What JSON cannot carry is lost before it gets here: HA sends a
//! `NaN` or an infinity as `null`, where `json.dumps` writes `NaN`.

use std::fmt::Write;

use serde_json::{Number, Value};

/// `value` as Python's `json.dumps` writes it.
pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, key);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &Number) {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => write!(out, "{u}").expect("writing to a String cannot fail"),
        (_, Some(i), _) => write!(out, "{i}").expect("writing to a String cannot fail"),
        (_, _, Some(f)) => out.push_str(&float_repr(f)),
        // Only with arbitrary precision, which the gateway does not enable.
        _ => out.push_str(&n.to_string()),
    }
}

/// Python's `repr(float)`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` gives as few digits as read back, like Python's repr,
    // but where two such strings are equally near (a tie at 17 digits) it
    // may take the other one: Python takes the nearest, ties to even, which
    // is `{:.Ne}` at that many digits. Only the layout differs then.
    let shortest = format!("{:e}", f.abs());
    let count = shortest.split_once('e').map_or(1, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let sci = format!("{:.*e}", count.saturating_sub(1), f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always writes an exponent");
    let exp: i32 = exp.parse().expect("{:e} writes an integer exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // Where the decimal point goes, counted from the first digit.
    let point = exp + 1;
    let body = if !(-3..=16).contains(&point) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exp_sign}{:02}", exp.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, fraction) = digits.split_at(point as usize);
        format!("{int}.{fraction}")
    };
    format!("{sign}{body}")
}

/// A JSON string with `ensure_ascii`: only printable ASCII stays as is.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("writing to a String cannot fail");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What Python 3 prints for `json.dumps(<the value HA holds>)`, for the
    /// JSON HA's websocket sends of that value.
    #[test]
    fn values_are_written_as_python_writes_them() {
        let table: &[(&str, &str)] = &[
            ("null", "null"),
            ("true", "true"),
            ("128", "128"),
            ("-7", "-7"),
            ("18446744073709551615", "18446744073709551615"),
            ("21.5", "21.5"),
            ("20.0", "20.0"),
            ("-0.0", "-0.0"),
            ("0.1", "0.1"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1.5e-7", "1.5e-07"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("1.2345678901234567e17", "1.2345678901234566e+17"),
            ("1e100", "1e+100"),
            ("123456.789", "123456.789"),
            ("0.30000000000000004", "0.30000000000000004"),
            // Two 17-digit strings read back; Python takes the nearest, ties to even.
            ("-1.6448855390339133e15", "-1644885539033913.2"),
            (r#""on""#, r#""on""#),
            (r#""°C""#, r#""\u00b0C""#),
            (r#""Küche 🌡""#, r#""K\u00fcche \ud83c\udf21""#),
            (r#""a\"b\\c\n\t\u0001\u007f/""#, r#""a\"b\\c\n\t\u0001\u007f/""#),
            ("[]", "[]"),
            ("{}", "{}"),
            (r#"[1,2.5,"x",null,[true]]"#, r#"[1, 2.5, "x", null, [true]]"#),
            (r#"{"b":1,"a":{"c":[0.5,"é"]}}"#, r#"{"b": 1, "a": {"c": [0.5, "\u00e9"]}}"#),
            (r#""2024-03-10T12:00:00.123456+00:00""#, r#""2024-03-10T12:00:00.123456+00:00""#),
        ];
        for (ha_sends, python_writes) in table {
            let value: Value = serde_json::from_str(ha_sends).unwrap();
            assert_eq!(dumps(&value), *python_writes, "{ha_sends}");
        }
    }

    #[test]
    fn floats_json_cannot_carry_are_written_as_python_does() {
        assert_eq!(float_repr(f64::NAN), "NaN");
        assert_eq!(float_repr(f64::INFINITY), "Infinity");
        assert_eq!(float_repr(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(float_repr(5e-324), "5e-324");
        assert_eq!(float_repr(f64::MAX), "1.7976931348623157e+308");
    }

    proptest::proptest! {
        /// HA writes floats with the shortest digits that read back; the
        /// gateway must read them back to the same float, or `repr` differs.
        #[test]
        fn floats_home_assistant_sends_read_back_exactly(bits in proptest::num::u64::ANY) {
            let f = f64::from_bits(bits);
            proptest::prop_assume!(f.is_finite());
            let sent = format!("{f:e}");
            let read: Value = serde_json::from_str(&sent).unwrap();
            proptest::prop_assert_eq!(read.as_f64().map(f64::to_bits), Some(bits), "{}", sent);
        }
    }

    #[test]
    fn object_order_is_kept() {
        let value = json!({"z": 1, "a": 2});
        assert_eq!(dumps(&value), r#"{"z": 1, "a": 2}"#);
    }
}
