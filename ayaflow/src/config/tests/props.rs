//! No input panics the parsers.

use super::*;

proptest! {
    #[test]
    fn arbitrary_text_never_panics_the_yaml_parser(text in "\\PC*") {
        let _ = Config::from_yaml_str(&text);
    }

    #[test]
    fn yaml_ish_text_never_panics(
        lines in prop::collection::vec(
            (
                "(port|quiet|allowed_ips|interface|ring_buffer_size|[a-z_]{1,12})",
                "( |)(-?[0-9]{1,25}|[a-z.:/]{0,12}|\\[[0-9a-z.:/, ]{0,20}\\]?|~|'[^']{0,8}'|\"[^\"]{0,8}\"|!t x|\\{a: 1\\}|&a 1|\\*a)",
                "(  )?",
            ),
            0..6,
        )
    ) {
        let text: String =
            lines.iter().map(|(k, v, indent)| format!("{indent}{k}:{v}\n")).collect();
        let _ = Config::from_yaml_str(&text);
    }

    #[test]
    fn arbitrary_flag_values_never_panic(
        values in prop::collection::vec(prop::option::of("\\PC{0,12}"), 14),
        ips in prop::option::of(prop::collection::vec("\\PC{0,12}", 0..3)),
    ) {
        let mut cli = Cli::default();
        let named = OPTIONS.iter().filter(|o| o.shape != Shape::ConfigFile);
        for (o, v) in named.zip(values) {
            let items = match (o.shape, v) {
                (Shape::List, _) => ips.clone(),
                (_, v) => v.map(|v| vec![v]),
            };
            if let Some(items) = items {
                cli.values.insert(o.name.to_owned(), items);
            }
        }
        let _ = Config::from_cli(cli);
    }
}
