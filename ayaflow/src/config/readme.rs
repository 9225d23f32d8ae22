//! The README's configuration table, rendered from the option declarations. A test compares it
//! with README.md, so the documentation cannot drift from the options.

use super::options::OPTIONS;

/// The first line of the table in the README.
pub const TABLE_HEADER: &str = "| CLI | YAML key | Env var | Meaning | Default |";

/// The Markdown table of every option: flags, YAML key, variable, meaning and default.
pub fn configuration_table() -> String {
    let mut out = format!("{TABLE_HEADER}\n| --- | --- | --- | --- | --- |\n");
    for o in OPTIONS {
        let cli = match o.short {
            Some(c) => format!("`-{c}, {}`", o.flag),
            None => format!("`{}`", o.flag),
        };
        let yaml = o.yaml_key().map(|k| format!("`{k}`")).unwrap_or_default();
        let cell = |s: &str| s.replace('|', "\\|");
        out.push_str(&format!(
            "| {cli} | {yaml} | `{}` | {} | {} |\n",
            o.env,
            cell(o.help),
            cell(o.default)
        ));
    }
    out
}

/// The table as README.md has it: from [`TABLE_HEADER`] to the first line that is not a row.
#[cfg(test)]
pub fn table_in(readme: &str) -> Option<String> {
    let start = readme.find(TABLE_HEADER)?;
    let mut out = String::new();
    for line in readme[start..].lines() {
        if !line.starts_with('|') {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}
