//! Subject syntax and NATS wildcard matching, shared by both backends.
//!
//! Both backends check subjects here before anything reaches a subscriber or a server, so
//! an invalid subject fails the same way in-process and on NATS. The rules follow NATS:
//! a subject is dot-separated non-empty tokens without whitespace; in a subscription filter
//! the token `*` matches exactly one token and `>` (last token only) matches one or more
//! trailing tokens. Published subjects may not contain wildcard tokens. A token that merely
//! contains `*` or `>` next to other characters (`a*b`) is a literal, as in NATS.

use crate::BusError;

/// One token of a parsed subscription filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterToken {
    /// Matches exactly this token.
    Literal(String),
    /// `*`: matches any one token.
    AnyOne,
    /// `>`: matches one or more trailing tokens (always the last filter token).
    Rest,
}

/// A validated subscription filter, ready for fast matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    tokens: Vec<FilterToken>,
}

impl Filter {
    /// Parses and validates a subscription filter such as `dea.*.start` or `apptail.>`.
    pub fn parse(filter: &str) -> Result<Filter, BusError> {
        check_tokens(filter)?;
        let count = filter.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (index, token) in filter.split('.').enumerate() {
            tokens.push(match token {
                "*" => FilterToken::AnyOne,
                ">" if index + 1 == count => FilterToken::Rest,
                ">" => return Err(BusError::InvalidSubject(filter.to_string())),
                literal => FilterToken::Literal(literal.to_string()),
            });
        }
        Ok(Filter { tokens })
    }

    /// True when the (already validated, wildcard-free) `subject` matches this filter.
    pub fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for token in &self.tokens {
            match token {
                FilterToken::Rest => return parts.next().is_some(),
                FilterToken::AnyOne => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                FilterToken::Literal(literal) => {
                    if parts.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The parsed tokens.
    pub fn tokens(&self) -> &[FilterToken] {
        &self.tokens
    }
}

/// Checks a subject to publish on (or to reply to): no wildcard tokens allowed.
pub fn validate_publish(subject: &str) -> Result<(), BusError> {
    check_tokens(subject)?;
    if subject.split('.').any(is_wildcard) {
        return Err(BusError::InvalidSubject(subject.to_string()));
    }
    Ok(())
}

/// Checks a subscription filter (wildcards allowed, `>` only last).
pub fn validate_filter(filter: &str) -> Result<(), BusError> {
    Filter::parse(filter).map(|_| ())
}

/// Checks a queue group name: non-empty, no whitespace or control characters.
pub fn validate_queue_group(group: &str) -> Result<(), BusError> {
    if group.is_empty() || group.chars().any(is_forbidden_char) {
        return Err(BusError::InvalidQueueGroup(group.to_string()));
    }
    Ok(())
}

/// True when `filter` matches `subject`. Returns false if either is invalid.
pub fn matches(filter: &str, subject: &str) -> bool {
    validate_publish(subject).is_ok()
        && Filter::parse(filter).is_ok_and(|parsed| parsed.matches(subject))
}

/// True for the wildcard tokens `*` and `>`.
fn is_wildcard(token: &str) -> bool {
    token == "*" || token == ">"
}

fn is_forbidden_char(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// The rules shared by filters and publish subjects: non-empty tokens, no whitespace.
fn check_tokens(subject: &str) -> Result<(), BusError> {
    let well_formed = !subject.is_empty()
        && !subject.chars().any(is_forbidden_char)
        && subject.split('.').all(|token| !token.is_empty());
    if well_formed {
        Ok(())
    } else {
        Err(BusError::InvalidSubject(subject.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("*", "a"));
        assert!(matches("*.*", "a.b"));
        assert!(!matches("a.*.c", "a.c"));
        assert!(!matches("a.*.c", "a.b.x.c"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("*", "a.b"));
    }

    #[test]
    fn greater_than_matches_one_or_more_trailing_tokens() {
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c.d"));
        assert!(matches(">", "a"));
        assert!(matches(">", "a.b.c"));
        assert!(matches("a.*.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.*.>", "a.b"));
        assert!(!matches("a.>", "b.c"));
    }

    #[test]
    fn literal_filters_match_only_themselves() {
        assert!(matches("dea.heartbeat", "dea.heartbeat"));
        assert!(!matches("dea.heartbeat", "dea.heartbeats"));
        assert!(!matches("dea.heartbeat", "dea.heartbeat.x"));
        assert!(!matches("dea.heartbeat.x", "dea.heartbeat"));
        assert!(
            matches("a*b.c", "a*b.c"),
            "a token containing '*' is a literal"
        );
        assert!(!matches("a*b.c", "axb.c"));
    }

    #[test]
    fn publish_subjects_reject_wildcards_and_malformed_tokens() {
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a\tb", "a.*", "*", "a.>", ">", "a\nb",
        ] {
            assert!(
                matches!(validate_publish(bad), Err(BusError::InvalidSubject(s)) if s == bad),
                "{bad:?} should be rejected"
            );
        }
        for good in ["a", "a.b.c", "_INBOX.abc123", "dea.0-1.start", "a*b", "x>y"] {
            assert!(
                validate_publish(good).is_ok(),
                "{good:?} should be accepted"
            );
        }
    }

    #[test]
    fn filters_allow_wildcards_but_greater_than_only_last() {
        for good in ["a.*", "*", ">", "a.>", "*.b.>", "a.*.c"] {
            assert!(validate_filter(good).is_ok(), "{good:?} should be accepted");
        }
        for bad in ["", "a.>.b", ">.a", "a..b", "a .b", "a."] {
            assert!(
                matches!(validate_filter(bad), Err(BusError::InvalidSubject(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn parsed_filter_has_expected_tokens() {
        let filter = Filter::parse("a.*.>").unwrap();
        assert_eq!(
            filter.tokens(),
            &[
                FilterToken::Literal("a".into()),
                FilterToken::AnyOne,
                FilterToken::Rest
            ]
        );
    }

    #[test]
    fn queue_groups_must_be_non_empty_without_whitespace() {
        assert!(validate_queue_group("stagers").is_ok());
        assert!(validate_queue_group("dea.pool-1").is_ok());
        for bad in ["", "a b", "a\n"] {
            assert!(matches!(
                validate_queue_group(bad),
                Err(BusError::InvalidQueueGroup(_))
            ));
        }
    }
}
