//! The fleet list: which devices a page shows (`GET /api/v1/devices`, the fleet page and
//! the live channel's view of it), and the counts shown above it.
//!
//! A query filters (a search of ids, online or offline, a kind), sorts and takes a page;
//! [`DeviceQuery::page`] does all three over references, so only the page is copied.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::api::DeviceView;

/// `GET /api/v1/devices?search=…&status=…&kind=…&sort=…&order=…&offset=…&limit=…`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct DeviceQuery {
    /// Devices whose id contains this text, ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusFilter>,
    /// Devices of exactly this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `id` unless asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<DeviceSort>,
    /// `asc` unless asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<SortOrder>,
    /// Matching devices to pass over first.
    #[serde(default)]
    pub offset: u32,
    /// 50 unless asked, 1 to 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Online or offline devices only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    Online,
    Offline,
}

/// What the list is sorted by; ties are broken by id, so a page is always the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    Id,
    /// Online first (ascending), then by id.
    Status,
    Kind,
    Firmware,
    /// When last heard from: ascending, the longest silent first.
    LastSeen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    Asc,
    Desc,
}

/// Above the list: how many devices the caller may see, and how many are online.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetSummary {
    pub total: u32,
    pub online: u32,
    pub offline: u32,
    /// Every kind among them, sorted, with its count: the kind filter's choices.
    pub kinds: Vec<KindCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KindCount {
    pub kind: String,
    pub count: u32,
}

/// A page of the fleet list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicePage {
    pub devices: Vec<DeviceView>,
    /// How many devices match the query in all.
    pub total: u32,
    pub offset: u32,
    pub limit: u32,
    /// Of all the devices the caller may see, whatever the query.
    pub summary: FleetSummary,
}

impl DeviceQuery {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;
    /// The longest search and kind accepted.
    pub const MAX_TEXT: usize = 128;

    pub fn limit(&self) -> u32 {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }

    pub fn sort(&self) -> DeviceSort {
        self.sort.unwrap_or(DeviceSort::Id)
    }

    pub fn order(&self) -> SortOrder {
        self.order.unwrap_or(SortOrder::Asc)
    }

    /// Why the query cannot be answered, for people: a limit out of range, a text too
    /// long. Unknown values of `status`, `sort` and `order` are refused when it is read.
    pub fn check(&self) -> Result<(), String> {
        if let Some(limit) = self.limit
            && !(1..=Self::MAX_LIMIT).contains(&limit)
        {
            return Err(format!(
                "limit {limit} is out of range: 1 to {}",
                Self::MAX_LIMIT
            ));
        }
        for (name, text) in [("search", &self.search), ("kind", &self.kind)] {
            if text.as_ref().is_some_and(|t| t.len() > Self::MAX_TEXT) {
                return Err(format!(
                    "{name} is too long: at most {} bytes",
                    Self::MAX_TEXT
                ));
            }
        }
        Ok(())
    }

    /// Whether `device` passes the filters.
    pub fn matches(&self, device: &DeviceView) -> bool {
        let status = match self.status {
            None => true,
            Some(StatusFilter::Online) => device.online,
            Some(StatusFilter::Offline) => !device.online,
        };
        let kind = self.kind.as_ref().is_none_or(|kind| &device.kind == kind);
        let search = match self.search.as_deref().map(str::trim) {
            None | Some("") => true,
            Some(text) => contains_ignoring_case(device.id.as_str(), text),
        };
        status && kind && search
    }

    /// How `a` and `b` compare in this query's order.
    pub fn compare(&self, a: &DeviceView, b: &DeviceView) -> Ordering {
        let by = match self.sort() {
            DeviceSort::Id => Ordering::Equal,
            DeviceSort::Status => b.online.cmp(&a.online),
            DeviceSort::Kind => a.kind.cmp(&b.kind),
            DeviceSort::Firmware => a.firmware.cmp(&b.firmware),
            DeviceSort::LastSeen => a.last_seen_ms.cmp(&b.last_seen_ms),
        }
        .then_with(|| a.id.cmp(&b.id));
        match self.order() {
            SortOrder::Asc => by,
            SortOrder::Desc => by.reverse(),
        }
    }

    /// The page of `devices` (those the caller may see) this query asks for, with the
    /// summary of all of them. Only the page's devices are cloned.
    pub fn page<'a>(&self, devices: impl IntoIterator<Item = &'a DeviceView>) -> DevicePage {
        let mut summary = FleetSummary::default();
        let mut kinds = std::collections::BTreeMap::<&str, u32>::new();
        let mut matching: Vec<&DeviceView> = Vec::new();
        for device in devices {
            summary.total += 1;
            if device.online {
                summary.online += 1;
            }
            *kinds.entry(device.kind.as_str()).or_default() += 1;
            if self.matches(device) {
                matching.push(device);
            }
        }
        summary.offline = summary.total - summary.online;
        summary.kinds = kinds
            .into_iter()
            .map(|(kind, count)| KindCount {
                kind: kind.to_owned(),
                count,
            })
            .collect();
        let (offset, limit) = (self.offset, self.limit());
        let total = u32::try_from(matching.len()).unwrap_or(u32::MAX);
        let start = (offset as usize).min(matching.len());
        let end = start.saturating_add(limit as usize).min(matching.len());
        // Only what the page needs is put in order: the first `end` of them.
        if end > 0 && end < matching.len() {
            matching.select_nth_unstable_by(end - 1, |a, b| self.compare(a, b));
            matching.truncate(end);
        }
        matching.sort_unstable_by(|a, b| self.compare(a, b));
        DevicePage {
            devices: matching[start..end].iter().map(|&d| d.clone()).collect(),
            total,
            offset,
            limit,
            summary,
        }
    }
}

impl StatusFilter {
    pub const ALL: [Self; 2] = [Self::Online, Self::Offline];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl DeviceSort {
    pub const ALL: [Self; 5] = [
        Self::Id,
        Self::Status,
        Self::Kind,
        Self::Firmware,
        Self::LastSeen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Status => "status",
            Self::Kind => "kind",
            Self::Firmware => "firmware",
            Self::LastSeen => "last_seen",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl SortOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Asc, Self::Desc]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl DeviceQuery {
    /// The query as URL parameters, in a fixed order, leaving out what is the default.
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        fn text(t: &Option<String>) -> Option<&str> {
            t.as_deref().map(str::trim).filter(|t| !t.is_empty())
        }
        if let Some(search) = text(&self.search) {
            params.push(("search", search.to_owned()));
        }
        if let Some(status) = self.status {
            params.push(("status", status.as_str().to_owned()));
        }
        if let Some(kind) = text(&self.kind) {
            params.push(("kind", kind.to_owned()));
        }
        if let Some(sort) = self.sort {
            params.push(("sort", sort.as_str().to_owned()));
        }
        if let Some(order) = self.order {
            params.push(("order", order.as_str().to_owned()));
        }
        if self.offset > 0 {
            params.push(("offset", self.offset.to_string()));
        }
        if let Some(limit) = self.limit {
            params.push(("limit", limit.to_string()));
        }
        params
    }

    /// A query from URL parameters (`get` reads one by name), as a page's address
    /// carries it: what cannot be read is left at its default, never an error.
    pub fn from_params(get: impl Fn(&str) -> Option<String>) -> Self {
        let text = |name: &str| {
            get(name)
                .map(|t| t.trim().chars().take(Self::MAX_TEXT).collect::<String>())
                .filter(|t| !t.is_empty())
        };
        Self {
            search: text("search"),
            status: get("status").as_deref().and_then(StatusFilter::parse),
            kind: text("kind"),
            sort: get("sort").as_deref().and_then(DeviceSort::parse),
            order: get("order").as_deref().and_then(SortOrder::parse),
            offset: get("offset").and_then(|o| o.parse().ok()).unwrap_or(0),
            limit: get("limit")
                .and_then(|l| l.parse::<u32>().ok())
                .map(|l| l.clamp(1, Self::MAX_LIMIT)),
        }
    }
}

/// Whether `haystack` contains `needle`, ignoring ASCII case (device ids are ASCII).
fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceId;

    fn device(id: &str, kind: &str, online: bool, last_seen_ms: u64) -> DeviceView {
        DeviceView {
            id: DeviceId::new(id).unwrap(),
            kind: kind.into(),
            firmware: "1.0".into(),
            online,
            since_ms: 0,
            last_seen_ms,
            heartbeat_ms: 5_000,
            capabilities: Default::default(),
            latest: Default::default(),
            hello_refused: None,
        }
    }

    fn fleet() -> Vec<DeviceView> {
        vec![
            device("pump-2", "pump", false, 20),
            device("Boiler-1", "boiler", true, 50),
            device("pump-1", "pump", true, 10),
            device("boiler-2", "boiler", false, 40),
            device("valve-1", "valve", true, 30),
        ]
    }

    fn ids(page: &DevicePage) -> Vec<&str> {
        page.devices.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn sorted_by_id_by_default_with_a_summary_of_all() {
        let page = DeviceQuery::default().page(&fleet());
        assert_eq!(
            ids(&page),
            ["Boiler-1", "boiler-2", "pump-1", "pump-2", "valve-1"]
        );
        assert_eq!((page.total, page.offset, page.limit), (5, 0, 50));
        assert_eq!(
            (
                page.summary.total,
                page.summary.online,
                page.summary.offline
            ),
            (5, 3, 2)
        );
        let kinds: Vec<_> = page
            .summary
            .kinds
            .iter()
            .map(|k| (k.kind.as_str(), k.count))
            .collect();
        assert_eq!(kinds, [("boiler", 2), ("pump", 2), ("valve", 1)]);
    }

    #[test]
    fn filters_combine_and_search_ignores_case() {
        let query = DeviceQuery {
            search: Some("BOILER".into()),
            ..DeviceQuery::default()
        };
        assert_eq!(ids(&query.page(&fleet())), ["Boiler-1", "boiler-2"]);
        let query = DeviceQuery {
            status: Some(StatusFilter::Online),
            kind: Some("pump".into()),
            ..DeviceQuery::default()
        };
        let page = query.page(&fleet());
        assert_eq!(ids(&page), ["pump-1"]);
        assert_eq!(page.total, 1);
        // The summary is of the whole fleet, whatever the filters.
        assert_eq!(page.summary.total, 5);
        let query = DeviceQuery {
            status: Some(StatusFilter::Offline),
            search: Some("  ".into()),
            ..DeviceQuery::default()
        };
        assert_eq!(ids(&query.page(&fleet())), ["boiler-2", "pump-2"]);
    }

    #[test]
    fn sorts_with_ties_broken_by_id_in_either_order() {
        let query = DeviceQuery {
            sort: Some(DeviceSort::Status),
            ..DeviceQuery::default()
        };
        assert_eq!(
            ids(&query.page(&fleet())),
            ["Boiler-1", "pump-1", "valve-1", "boiler-2", "pump-2"]
        );
        let query = DeviceQuery {
            sort: Some(DeviceSort::LastSeen),
            order: Some(SortOrder::Desc),
            ..DeviceQuery::default()
        };
        assert_eq!(
            ids(&query.page(&fleet())),
            ["Boiler-1", "boiler-2", "valve-1", "pump-2", "pump-1"]
        );
        let query = DeviceQuery {
            sort: Some(DeviceSort::Kind),
            order: Some(SortOrder::Desc),
            ..DeviceQuery::default()
        };
        assert_eq!(
            ids(&query.page(&fleet())),
            ["valve-1", "pump-2", "pump-1", "boiler-2", "Boiler-1"]
        );
    }

    #[test]
    fn pages_are_slices_of_the_whole_order() {
        let all: Vec<DeviceView> = (0..1_000)
            .map(|n| device(&format!("d-{n:04}"), "k", n % 3 == 0, 1_000 - n))
            .collect();
        let whole = DeviceQuery {
            sort: Some(DeviceSort::Status),
            limit: Some(500),
            ..DeviceQuery::default()
        };
        let mut expected = ids(&whole.page(&all))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        expected.extend(
            ids(&DeviceQuery {
                offset: 500,
                ..whole.clone()
            }
            .page(&all))
            .into_iter()
            .map(str::to_owned),
        );
        let mut paged = Vec::new();
        for offset in (0..1_000).step_by(70) {
            let query = DeviceQuery {
                offset,
                limit: Some(70),
                ..whole.clone()
            };
            let page = query.page(&all);
            assert_eq!(page.total, 1_000);
            paged.extend(ids(&page).into_iter().map(str::to_owned));
        }
        assert_eq!(paged, expected);
        assert_eq!(&expected[..2], ["d-0000", "d-0003"]);
        // Past the end: an empty page, the total still right.
        let past = DeviceQuery {
            offset: 5_000,
            ..DeviceQuery::default()
        }
        .page(&all);
        assert!(past.devices.is_empty());
        assert_eq!(past.total, 1_000);
    }

    #[test]
    fn params_round_trip_and_bad_ones_are_defaults() {
        let query = DeviceQuery {
            search: Some("boiler 1".into()),
            status: Some(StatusFilter::Offline),
            kind: Some("pump".into()),
            sort: Some(DeviceSort::LastSeen),
            order: Some(SortOrder::Desc),
            offset: 100,
            limit: Some(25),
        };
        let params = query.to_params();
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(DeviceQuery::from_params(get), query);
        assert!(DeviceQuery::default().to_params().is_empty());
        let bad = |name: &str| match name {
            "status" => Some("sleeping".to_owned()),
            "sort" => Some("colour".to_owned()),
            "offset" => Some("-3".to_owned()),
            "limit" => Some("100000".to_owned()),
            "search" => Some("   ".to_owned()),
            _ => None,
        };
        let read = DeviceQuery::from_params(bad);
        assert_eq!(
            read,
            DeviceQuery {
                limit: Some(500),
                ..DeviceQuery::default()
            }
        );
    }

    #[test]
    fn limits_and_texts_are_checked() {
        assert!(DeviceQuery::default().check().is_ok());
        for limit in [0, 501] {
            let query = DeviceQuery {
                limit: Some(limit),
                ..DeviceQuery::default()
            };
            assert!(query.check().unwrap_err().contains("limit"));
        }
        let query = DeviceQuery {
            search: Some("x".repeat(129)),
            ..DeviceQuery::default()
        };
        assert!(query.check().unwrap_err().contains("search"));
    }
}
