//! The links known, by ifindex. The kernel sends `RTM_NEWLINK` for every change of a link
//! (flags, carrier, MTU, statistics...), and more than once for one creation; the table turns
//! those into events only when something attaching cares about changed: a new ifindex, or a
//! new name, link type or up state.

use std::collections::BTreeMap;

use super::{Link, LinkEvent};

#[derive(Debug, Default)]
pub(super) struct LinkTable {
    /// Every link of the namespace, as last reported.
    links: BTreeMap<u32, Link>,
}

impl LinkTable {
    /// Records an `RTM_NEWLINK`; the event, if this is news.
    pub fn new_link(&mut self, link: Link) -> Option<LinkEvent> {
        match self.links.insert(link.ifindex, link.clone()) {
            None => Some(LinkEvent::Added(link)),
            Some(before) if before == link => None,
            Some(before) => Some(LinkEvent::Changed { before, now: link }),
        }
    }

    /// Records an `RTM_DELLINK`; the event, if the link was known.
    pub fn del_link(&mut self, ifindex: u32) -> Option<LinkEvent> {
        self.links
            .remove(&ifindex)
            .map(|Link { ifindex, name, .. }| LinkEvent::Removed { ifindex, name })
    }

    /// Replaces every link with `fresh`'s (a new dump, after messages were lost), returning
    /// what changed: the removals first, then additions and changes by ifindex.
    pub fn replace_all(&mut self, fresh: LinkTable) -> Vec<LinkEvent> {
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|i| !fresh.links.contains_key(i))
            .copied()
            .collect();
        let mut events: Vec<LinkEvent> =
            gone.into_iter().filter_map(|i| self.del_link(i)).collect();
        for link in fresh.links.into_values() {
            events.extend(self.new_link(link));
        }
        events
    }

    /// Every link, by ifindex.
    pub fn links(&self) -> Vec<Link> {
        self.links.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, up: bool) -> Link {
        Link {
            ifindex,
            name: name.to_owned(),
            link_type: 1,
            up,
        }
    }

    #[test]
    fn only_real_changes_are_events() {
        let mut t = LinkTable::default();
        assert_eq!(
            t.new_link(link(2, "a", false)),
            Some(LinkEvent::Added(link(2, "a", false)))
        );
        assert_eq!(t.new_link(link(2, "a", false)), None, "a repeat");
        assert_eq!(
            t.new_link(link(2, "b", false)),
            Some(LinkEvent::Changed {
                before: link(2, "a", false),
                now: link(2, "b", false)
            }),
            "a rename"
        );
        assert!(matches!(
            t.new_link(link(2, "b", true)),
            Some(LinkEvent::Changed { .. })
        ));
        assert_eq!(
            t.del_link(2),
            Some(LinkEvent::Removed {
                ifindex: 2,
                name: "b".to_owned()
            })
        );
        assert_eq!(t.del_link(2), None, "already gone");
        assert!(t.links().is_empty());
    }

    #[test]
    fn a_resync_reports_the_differences() {
        let mut t = LinkTable::default();
        for l in [link(1, "lo", true), link(2, "a", true), link(3, "b", true)] {
            t.new_link(l);
        }
        let mut fresh = LinkTable::default();
        for l in [link(1, "lo", true), link(3, "c", true), link(4, "d", false)] {
            fresh.new_link(l);
        }
        assert_eq!(
            t.replace_all(fresh),
            vec![
                LinkEvent::Removed {
                    ifindex: 2,
                    name: "a".to_owned()
                },
                LinkEvent::Changed {
                    before: link(3, "b", true),
                    now: link(3, "c", true)
                },
                LinkEvent::Added(link(4, "d", false)),
            ]
        );
        assert_eq!(
            t.links(),
            [link(1, "lo", true), link(3, "c", true), link(4, "d", false)]
        );
    }
}
