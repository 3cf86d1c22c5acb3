//! Integer body fields that also take a JSON number with a zero fraction (`106.0`): JSON Schema
//! counts those as integers, so a client generated from the document may send them.

use serde::de::{Error, Unexpected};
use serde::{Deserialize, Deserializer};
use serde_json::Number;

/// An optional whole number (`null` or absent: `None`); use with `#[serde(default)]`.
pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<Option<T>, D::Error> {
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(n) => whole(&n).map(Some),
    }
}

/// A required whole number.
pub fn required<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
    whole(&Number::deserialize(deserializer)?)
}

fn whole<T: TryFrom<u64>, E: Error>(n: &Number) -> Result<T, E> {
    // 2^64 as f64: the first whole float that does not fit a u64.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    let value = n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "checked: whole, 0 <= f < 2^64")]
        (f.fract() == 0.0 && (0.0..LIMIT).contains(&f)).then_some(f as u64)
    });
    value
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| E::invalid_value(Unexpected::Other(&n.to_string()), &"a whole number in range"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::option")]
        n: Option<u32>,
    }

    fn parse(json: &str) -> Option<Option<u32>> {
        serde_json::from_str::<Body>(json).ok().map(|b| b.n)
    }

    #[test]
    fn whole_floats_are_integers_and_the_rest_is_refused() {
        assert_eq!(parse(r#"{"n": 106}"#), Some(Some(106)));
        assert_eq!(parse(r#"{"n": 106.0}"#), Some(Some(106)));
        assert_eq!(parse(r#"{"n": 1e2}"#), Some(Some(100)));
        assert_eq!(parse(r#"{"n": null}"#), Some(None));
        assert_eq!(parse("{}"), Some(None));
        assert_eq!(parse(r#"{"n": 1.5}"#), None);
        assert_eq!(parse(r#"{"n": -1}"#), None);
        assert_eq!(parse(r#"{"n": -1.0}"#), None);
        assert_eq!(parse(r#"{"n": 4294967296}"#), None, "over u32");
        assert_eq!(parse(r#"{"n": 1e300}"#), None);
        assert_eq!(parse(r#"{"n": "1"}"#), None);
    }
}
