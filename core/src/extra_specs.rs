//! nova's `extra_specs_ops.match(value, req)`: how a host or aggregate value is compared with
//! a flavor extra_spec string. `value` is the host side, `req` the extra_spec.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MatchError {
    #[error("operator `{op}` needs numbers, got `{value}` and `{operand}`")]
    NotANumber { op: String, value: String, operand: String },
}

/// Returns whether `value` satisfies `req`. Operators as in current nova; a non-numeric
/// operand to a float operator is an error (nova raises ValueError there).
pub fn matches(value: &str, req: &str) -> Result<bool, MatchError> {
    let words: Vec<&str> = req.split_whitespace().collect();
    let Some(&op) = words.first() else {
        return Ok(value == req);
    };
    let float_op: Option<fn(f64, f64) -> bool> = match op {
        "=" => Some(|x, y| x >= y),
        "==" => Some(|x, y| x == y),
        "!=" => Some(|x, y| x != y),
        ">=" => Some(|x, y| x >= y),
        "<=" => Some(|x, y| x <= y),
        _ => None,
    };
    let string_op: Option<fn(&str, &str) -> bool> = match op {
        "s==" => Some(|x, y| x == y),
        "s!=" => Some(|x, y| x != y),
        "s<" => Some(|x, y| x < y),
        "s<=" => Some(|x, y| x <= y),
        "s>" => Some(|x, y| x > y),
        "s>=" => Some(|x, y| x >= y),
        "<in>" => Some(|x, y| x.contains(y)),
        _ => None,
    };
    if float_op.is_none() && string_op.is_none() && op != "<or>" && op != "<all-in>" {
        return Ok(value == req);
    }
    if words.len() < 2 {
        // An operator without an operand never matches.
        return Ok(false);
    }
    if let Some(f) = float_op {
        let parse = |s: &str| s.parse::<f64>().ok();
        return match (parse(value), parse(words[1])) {
            (Some(x), Some(y)) => Ok(f(x, y)),
            _ => Err(MatchError::NotANumber {
                op: op.to_string(),
                value: value.to_string(),
                operand: words[1].to_string(),
            }),
        };
    }
    if let Some(f) = string_op {
        return Ok(f(value, words[1]));
    }
    if op == "<all-in>" {
        return Ok(words[1..].iter().all(|w| value.contains(w)));
    }
    // `<or>`: candidate, separator, candidate, ... (the separators are `<or>` themselves).
    Ok(words[1..].iter().step_by(2).any(|w| *w == value))
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn check(value: &str, req: &str, expect: bool) {
        assert_eq!(matches(value, req).unwrap(), expect, "match({value:?}, {req:?})");
    }

    #[test]
    fn table() {
        check("123", "123", true);
        check("124", "123", false);
        check("12", "= 10", true); // `=` means at least
        check("8", "= 10", false);
        check("10", "== 10", true);
        check("10", "!= 10", false);
        check("11", ">= 10", true);
        check("9", "<= 10", true);
        check("abc", "s== abc", true);
        check("abc", "s!= abc", false);
        check("abc", "s< abd", true);
        check("abd", "s> abc", true);
        check("a big value", "<in> big", true);
        check("a value", "<in> big", false);
        check("aes sse2", "<all-in> aes sse2", true);
        check("aes", "<all-in> aes sse2", false);
        check("kvm", "<or> qemu <or> kvm", true);
        check("xen", "<or> qemu <or> kvm", false);
        check("10", ">=", false);
    }

    #[test]
    fn float_operator_on_text_is_an_error() {
        assert!(matches("abc", ">= 10").is_err());
    }
}
