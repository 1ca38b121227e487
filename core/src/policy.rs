//! oslo.policy's rule language: parse once, evaluate many times without a runtime.
//!
//! Grammar: `""` and `@` allow, `!` denies; checks `role:X`, `rule:NAME`, `is_admin:True`
//! and generic `field:%(target_field)s` or `field:literal`; combined with `and`, `or`,
//! `not` and parentheses (`not` binds tightest, then `and`, then `or`).

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("policy `{rule}`: {message}")]
    Parse { rule: String, message: String },
    #[error("policy rule `{0}` is not defined")]
    UnknownRule(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Allow,
    Deny,
    Role(String),
    RuleRef(String),
    /// `left:right`: credential field `left` against `right` (a `%(x)s` target lookup or a literal).
    Generic {
        field: String,
        value: String,
    },
    Not(Box<Rule>),
    And(Vec<Rule>),
    Or(Vec<Rule>),
}

/// Who is asking: the auth context the API builds from a validated token.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub user_id: String,
    pub project_id: String,
    pub roles: Vec<String>,
    pub is_admin: bool,
}

impl Credentials {
    fn field(&self, name: &str) -> Option<String> {
        Some(match name {
            "user_id" => self.user_id.clone(),
            "project_id" => self.project_id.clone(),
            "is_admin" => if self.is_admin { "True" } else { "False" }.to_string(),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    LParen,
    RParen,
    And,
    Or,
    Not,
    Check(String),
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let mut word = raw;
        while let Some(rest) = word.strip_prefix('(') {
            out.push(Token::LParen);
            word = rest;
        }
        let mut closing = 0;
        while let Some(rest) = word.strip_suffix(')') {
            // `%(project_id)s` ends in `s`, not `)`, so only real parentheses are stripped.
            closing += 1;
            word = rest;
        }
        if !word.is_empty() {
            out.push(match word {
                "and" => Token::And,
                "or" => Token::Or,
                "not" => Token::Not,
                w => Token::Check(w.to_string()),
            });
        }
        out.extend(std::iter::repeat_n(Token::RParen, closing));
    }
    out
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> PolicyError {
        PolicyError::Parse { rule: self.text.to_string(), message: message.into() }
    }
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }
    fn or(&mut self) -> Result<Rule, PolicyError> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.pop().unwrap_or(Rule::Deny) } else { Rule::Or(parts) })
    }
    fn and(&mut self) -> Result<Rule, PolicyError> {
        let mut parts = vec![self.unary()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.pop().unwrap_or(Rule::Deny) } else { Rule::And(parts) })
    }
    fn unary(&mut self) -> Result<Rule, PolicyError> {
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Not) => {
                self.pos += 1;
                Ok(Rule::Not(Box::new(self.unary()?)))
            }
            Some(Token::LParen) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::RParen) {
                    return Err(self.err("missing `)`"));
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(Token::Check(word)) => {
                self.pos += 1;
                check(&word).ok_or_else(|| self.err(format!("`{word}` is not a check (want kind:match, @ or !)")))
            }
            Some(t) => Err(self.err(format!("unexpected {t:?}"))),
            None => Err(self.err("rule ends too early")),
        }
    }
}

fn check(word: &str) -> Option<Rule> {
    match word {
        "@" => return Some(Rule::Allow),
        "!" => return Some(Rule::Deny),
        _ => {}
    }
    let (kind, value) = word.split_once(':')?;
    Some(match kind {
        "role" => Rule::Role(value.to_lowercase()),
        "rule" => Rule::RuleRef(value.to_string()),
        _ => Rule::Generic { field: kind.to_string(), value: value.to_string() },
    })
}

pub fn parse(text: &str) -> Result<Rule, PolicyError> {
    if text.trim().is_empty() {
        return Ok(Rule::Allow);
    }
    let mut parser = Parser { tokens: tokenize(text), pos: 0, text };
    let rule = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(parser.err(format!("unexpected {:?}", parser.tokens[parser.pos])));
    }
    Ok(rule)
}

/// A set of named rules, as a policy file holds them.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: BTreeMap<String, Rule>,
}

/// The rules nova and stackbed's API enforce, with today's defaults.
pub const NOVA_DEFAULTS: &[(&str, &str)] = &[
    ("admin_api", "role:admin"),
    ("project_member_or_admin", "(role:member and project_id:%(project_id)s) or role:admin"),
    ("project_reader_or_admin", "(role:reader and project_id:%(project_id)s) or role:admin"),
    ("os_compute_api:servers:create", "rule:project_member_or_admin"),
    ("os_compute_api:servers:delete", "rule:project_member_or_admin"),
    ("os_compute_api:servers:show", "rule:project_reader_or_admin"),
    ("os_compute_api:servers:index", "role:reader"),
];

impl Policy {
    pub fn from_rules(rules: &[(&str, &str)]) -> Result<Policy, PolicyError> {
        let mut policy = Policy::default();
        for (name, text) in rules {
            policy.rules.insert(name.to_string(), parse(text)?);
        }
        Ok(policy)
    }

    pub fn nova_defaults() -> Policy {
        // The defaults are constants checked by a test; failing to parse them is a bug.
        Policy::from_rules(NOVA_DEFAULTS).expect("nova default policy parses")
    }

    /// Whether `creds` may do `action` on `target` (target fields such as `project_id`).
    pub fn enforce(
        &self,
        action: &str,
        creds: &Credentials,
        target: &BTreeMap<&str, String>,
    ) -> Result<bool, PolicyError> {
        let rule = self.rules.get(action).ok_or_else(|| PolicyError::UnknownRule(action.to_string()))?;
        self.eval(rule, creds, target, 0)
    }

    fn eval(
        &self,
        rule: &Rule,
        creds: &Credentials,
        target: &BTreeMap<&str, String>,
        depth: u32,
    ) -> Result<bool, PolicyError> {
        // Rule references could loop; oslo.policy would recurse forever, we refuse.
        if depth > 32 {
            return Err(PolicyError::Parse {
                rule: format!("{rule:?}"),
                message: "rule references nest too deep".into(),
            });
        }
        Ok(match rule {
            Rule::Allow => true,
            Rule::Deny => false,
            Rule::Role(r) => creds.roles.iter().any(|have| have.eq_ignore_ascii_case(r)),
            Rule::RuleRef(name) => {
                let inner = self.rules.get(name).ok_or_else(|| PolicyError::UnknownRule(name.clone()))?;
                self.eval(inner, creds, target, depth + 1)?
            }
            Rule::Generic { field, value } => {
                let want = match value.strip_prefix("%(").and_then(|v| v.strip_suffix(")s")) {
                    Some(key) => match target.get(key) {
                        Some(v) => v.clone(),
                        None => return Ok(false),
                    },
                    None => value.clone(),
                };
                creds.field(field).is_some_and(|have| have == want)
            }
            Rule::Not(inner) => !self.eval(inner, creds, target, depth + 1)?,
            Rule::And(parts) => {
                for p in parts {
                    if !self.eval(p, creds, target, depth + 1)? {
                        return Ok(false);
                    }
                }
                true
            }
            Rule::Or(parts) => {
                for p in parts {
                    if self.eval(p, creds, target, depth + 1)? {
                        return Ok(true);
                    }
                }
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(project: &str, roles: &[&str]) -> Credentials {
        Credentials {
            user_id: "u".into(),
            project_id: project.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            is_admin: false,
        }
    }

    #[test]
    fn servers_create_today() {
        let policy = Policy::nova_defaults();
        let target: BTreeMap<&str, String> = [("project_id", "p1".to_string())].into_iter().collect();
        let cases = [
            (creds("p1", &["member"]), true),
            (creds("p2", &["member"]), false),
            (creds("p1", &["reader"]), false),
            (creds("p2", &["admin"]), true),
            (creds("p1", &[]), false),
        ];
        for (c, expect) in cases {
            assert_eq!(policy.enforce("os_compute_api:servers:create", &c, &target).unwrap(), expect, "{c:?}");
        }
    }

    #[test]
    fn grammar() {
        assert_eq!(parse("").unwrap(), Rule::Allow);
        assert_eq!(parse("!").unwrap(), Rule::Deny);
        assert_eq!(
            parse("not role:a or role:b and role:c").unwrap(),
            Rule::Or(vec![
                Rule::Not(Box::new(Rule::Role("a".into()))),
                Rule::And(vec![Rule::Role("b".into()), Rule::Role("c".into())]),
            ])
        );
        assert!(parse("(role:a").is_err());
        assert!(parse("role:a or").is_err());
        assert!(parse("role:a role:b").is_err());
        assert!(parse("nonsense").is_err());
    }

    #[test]
    fn is_admin_and_unknown_rules() {
        let policy = Policy::from_rules(&[("x", "is_admin:True"), ("y", "rule:missing")]).unwrap();
        let mut c = creds("p", &[]);
        let t = BTreeMap::new();
        assert!(!policy.enforce("x", &c, &t).unwrap());
        c.is_admin = true;
        assert!(policy.enforce("x", &c, &t).unwrap());
        assert!(matches!(policy.enforce("y", &c, &t), Err(PolicyError::UnknownRule(_))));
        assert!(matches!(policy.enforce("z", &c, &t), Err(PolicyError::UnknownRule(_))));
    }
}
