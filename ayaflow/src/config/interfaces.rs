//! Which interfaces to observe: `--interface` (names, glob patterns and `auto`) minus
//! `--exclude-interface`, parsed and checked here before anything is attached.
//!
//! The agent resolves `auto` (the default route's interface) once at start with
//! [`InterfaceSelection::resolve_auto`]; after that, [`InterfaceSelection::matches`] decides for
//! every interface that exists or appears later (see `links`), and
//! [`InterfaceSelection::named`] lists the plain names, which must exist at start.

use std::fmt;

use glob::Pattern;

use super::{
    Config, ConfigError,
    value::{Given, valid_interface_name},
};

/// One item of `--interface` or `--exclude-interface`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceMatch {
    /// The interface of the default route, resolved at start by the caller
    /// ([`InterfaceSelection::resolve_auto`]); it matches nothing until then. Only in the
    /// include list.
    Auto,
    /// One interface, by its exact name (valid as the kernel checks names).
    Name(String),
    /// A shell glob (`*`, `?`, `[abc]`, `[!abc]`, `[a-z]`) over interface names.
    Pattern(Pattern),
}

impl InterfaceMatch {
    /// Returns true if and only if this item matches the interface `name` (`Auto` never does).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            InterfaceMatch::Auto => false,
            InterfaceMatch::Name(n) => n == name,
            InterfaceMatch::Pattern(p) => p.matches(name),
        }
    }
}

impl fmt::Display for InterfaceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceMatch::Auto => f.write_str("auto"),
            InterfaceMatch::Name(n) => f.write_str(n),
            InterfaceMatch::Pattern(p) => f.write_str(p.as_str()),
        }
    }
}

/// The interfaces to observe: those any `include` item matches and no `exclude` item does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSelection {
    /// What `--interface` selects, in the order given; never empty.
    pub include: Vec<InterfaceMatch>,
    /// What `--exclude-interface` leaves out (names and patterns, never `Auto`); empty by
    /// default.
    pub exclude: Vec<InterfaceMatch>,
}

impl Default for InterfaceSelection {
    /// `auto`: the default route's interface, nothing excluded.
    fn default() -> InterfaceSelection {
        InterfaceSelection {
            include: vec![InterfaceMatch::Auto],
            exclude: Vec::new(),
        }
    }
}

impl InterfaceSelection {
    /// Returns true if and only if `name` is selected: an include item matches it and no
    /// exclude item does. `Auto` matches nothing, so call [`InterfaceSelection::resolve_auto`]
    /// first.
    pub fn matches(&self, name: &str) -> bool {
        self.include.iter().any(|m| m.matches(name))
            && !self.exclude.iter().any(|m| m.matches(name))
    }

    /// Returns true if and only if `auto` is among the included items.
    pub fn has_auto(&self) -> bool {
        self.include.contains(&InterfaceMatch::Auto)
    }

    /// Returns true if and only if a glob pattern is among the included items (so interfaces
    /// that appear later may be selected too).
    pub fn has_patterns(&self) -> bool {
        self.include
            .iter()
            .any(|m| matches!(m, InterfaceMatch::Pattern(_)))
    }

    /// `auto` replaced by `default_name` (the default route's interface, which the caller
    /// finds), or dropped when there is none. Whether a missing default is an error is the
    /// caller's choice: it is when `auto` was all that was included (check
    /// [`InterfaceSelection::has_auto`] and [`InterfaceSelection::named`] /
    /// [`InterfaceSelection::has_patterns`] afterwards).
    pub fn resolve_auto(self, default_name: Option<String>) -> InterfaceSelection {
        let include = self
            .include
            .into_iter()
            .filter_map(|m| match m {
                InterfaceMatch::Auto => default_name.clone().map(InterfaceMatch::Name),
                other => Some(other),
            })
            .collect();
        InterfaceSelection {
            include,
            exclude: self.exclude,
        }
    }

    /// The included plain names that no exclude item removes, each once, in the order given.
    /// These must exist at start; a pattern may match nothing yet.
    pub fn named(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for m in &self.include {
            if let InterfaceMatch::Name(n) = m
                && !names.contains(&n.as_str())
                && self.matches(n)
            {
                names.push(n);
            }
        }
        names
    }
}

impl fmt::Display for InterfaceSelection {
    /// As it would be written: `eth0,veth*`, then ` minus cali0` when something is excluded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.include))?;
        if !self.exclude.is_empty() {
            write!(f, " minus {}", join(&self.exclude))?;
        }
        Ok(())
    }
}

fn join(items: &[InterfaceMatch]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The glob syntax, for error messages.
const PATTERN_SYNTAX: &str = "glob patterns use `*`, `?` and classes such as [0-9] or [!ab]";

/// One item: `auto` (if `auto_allowed`), a glob pattern (it has `*`, `?` or `[`), or a name.
fn parse_item(
    g: &Given,
    item: &str,
    shown: String,
    auto_allowed: bool,
) -> Result<InterfaceMatch, ConfigError> {
    if item.eq_ignore_ascii_case("auto") {
        return if auto_allowed {
            Ok(InterfaceMatch::Auto)
        } else {
            Err(g.invalid_expecting(
                shown,
                "interface names or glob patterns; auto is only for --interface (name the \
                 interface to leave out)"
                    .to_owned(),
            ))
        };
    }
    if !item.contains(['*', '?', '[']) {
        return if valid_interface_name(item) {
            Ok(InterfaceMatch::Name(item.to_owned()))
        } else {
            Err(g.invalid(shown))
        };
    }
    // A pattern with characters no interface name has could never match: reject it now.
    if item.contains(['/', ':']) || item.contains(char::is_whitespace) {
        return Err(g.invalid(shown));
    }
    Pattern::new(item)
        .map(InterfaceMatch::Pattern)
        .map_err(|e| {
            g.invalid_expecting(
                shown,
                format!(
                    "a valid glob pattern ({PATTERN_SYNTAX}): {} at character {}",
                    e.msg,
                    e.pos + 1
                ),
            )
        })
}

/// `apply` of `--interface`: a non-empty list of names, patterns and `auto`.
pub(super) fn apply_include(g: Option<&Given>, c: &mut Config) -> Result<(), ConfigError> {
    let Some(g) = g else { return Ok(()) };
    let include = g
        .items_or_comma_text()?
        .into_iter()
        .map(|(item, shown)| parse_item(g, &item, shown, true))
        .collect::<Result<Vec<_>, _>>()?;
    if include.is_empty() {
        return Err(g.invalid(g.shown()));
    }
    c.interfaces.include = include;
    Ok(())
}

/// `apply` of `--exclude-interface` (declared after `--interface`, whose value it checks
/// against): names and patterns; a plain name must be one the include list could select.
pub(super) fn apply_exclude(g: Option<&Given>, c: &mut Config) -> Result<(), ConfigError> {
    let Some(g) = g else { return Ok(()) };
    let exclude = g
        .items_or_comma_text()?
        .into_iter()
        .map(|(item, shown)| {
            let m = parse_item(g, &item, shown.clone(), false)?;
            let selection = &c.interfaces;
            // With `auto` the name may be the default route's interface: known only at start.
            if let InterfaceMatch::Name(n) = &m
                && !selection.has_auto()
                && !selection.include.iter().any(|i| i.matches(n))
            {
                return Err(g.conflict(
                    shown,
                    format!(
                        "{n} is excluded but not included by --interface {}; remove it",
                        join(&selection.include)
                    ),
                ));
            }
            Ok(m)
        })
        .collect::<Result<Vec<_>, _>>()?;
    c.interfaces.exclude = exclude;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> InterfaceMatch {
        InterfaceMatch::Pattern(Pattern::new(p).expect("a valid pattern"))
    }

    fn name(n: &str) -> InterfaceMatch {
        InterfaceMatch::Name(n.to_owned())
    }

    #[test]
    fn includes_minus_excludes() {
        let s = InterfaceSelection {
            include: vec![name("eth0"), pattern("veth*"), pattern("cali?[0-9]")],
            exclude: vec![pattern("veth9*"), name("vethx")],
        };
        for (ifname, selected) in [
            ("eth0", true),
            ("eth1", false),
            ("veth12ab", true),
            ("veth", true),
            ("veth9", false),
            ("vethx", false),
            ("calia1", true),
            ("calia", false),
            ("Eth0", false),
        ] {
            assert_eq!(s.matches(ifname), selected, "{ifname}");
        }
        assert!(s.has_patterns());
        assert_eq!(s.named(), ["eth0"]);
        assert_eq!(s.to_string(), "eth0,veth*,cali?[0-9] minus veth9*,vethx");
    }

    #[test]
    fn auto_matches_nothing_until_resolved() {
        let s = InterfaceSelection {
            include: vec![InterfaceMatch::Auto, pattern("lxc*"), name("eth1")],
            exclude: vec![],
        };
        assert!(s.has_auto() && !s.matches("eth0"));
        let resolved = s.clone().resolve_auto(Some("eth0".to_owned()));
        assert!(!resolved.has_auto());
        assert!(resolved.matches("eth0") && resolved.matches("lxc1"));
        assert_eq!(resolved.named(), ["eth0", "eth1"]);
        // No default route: `auto` is dropped, the rest stays.
        let without = s.resolve_auto(None);
        assert_eq!(without.include, vec![pattern("lxc*"), name("eth1")]);
        assert_eq!(without.named(), ["eth1"]);
    }

    #[test]
    fn named_lists_each_selected_name_once() {
        let s = InterfaceSelection {
            include: vec![name("eth0"), name("eth1"), name("eth0")],
            exclude: vec![name("eth1")],
        }
        .resolve_auto(None);
        assert_eq!(s.named(), ["eth0"]);
        assert!(!s.has_patterns());
        let d = InterfaceSelection::default();
        assert!(d.has_auto() && d.named().is_empty() && !d.has_patterns());
        assert_eq!(d.to_string(), "auto");
    }
}
