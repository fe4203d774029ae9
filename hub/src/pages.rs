//! Fleet pages shared by every tab that shows the same one: a page is computed once per
//! [`Hub::devices_generation`](crate::Hub::devices_generation) for each query and each
//! set of devices a viewer may see, however many tabs show it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use protocol::{
    DeviceId,
    fleet::{DevicePage, DeviceQuery},
};

/// A fleet page, shared, with the ids of its devices (what a tab showing it asks of
/// every event): kept once, not once per tab.
#[derive(Debug)]
pub struct SharedPage {
    pub page: DevicePage,
    pub ids: HashSet<DeviceId>,
}

impl SharedPage {
    fn new(page: DevicePage) -> Self {
        let ids = page.devices.iter().map(|d| d.id.clone()).collect();
        Self { page, ids }
    }
}

impl std::ops::Deref for SharedPage {
    type Target = DevicePage;

    fn deref(&self) -> &DevicePage {
        &self.page
    }
}

/// Distinct pages kept at once; beyond it, the cache starts afresh.
const MAX_PAGES: usize = 1_024;

/// A page's query and its viewer.
type Key = (DeviceQuery, String);

#[derive(Debug, Default)]
pub(crate) struct Pages {
    /// By query and viewer: the generation the page was computed at, and the page.
    pages: Mutex<HashMap<Key, (u64, Arc<SharedPage>)>>,
}

impl Pages {
    /// The page for `query` and `viewer` at `generation`, computed by `compute` unless
    /// it already was.
    pub(crate) fn get(
        &self,
        query: &DeviceQuery,
        viewer: &str,
        generation: u64,
        compute: impl FnOnce() -> DevicePage,
    ) -> Arc<SharedPage> {
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        let key = (query.clone(), viewer.to_owned());
        if let Some((at, page)) = pages.get(&key)
            && *at == generation
        {
            return page.clone();
        }
        let page = Arc::new(SharedPage::new(compute()));
        if pages.len() >= MAX_PAGES {
            pages.retain(|_, (at, _)| *at == generation);
            if pages.len() >= MAX_PAGES {
                pages.clear();
            }
        }
        pages.insert(key, (generation, page.clone()));
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(total: u32) -> DevicePage {
        DevicePage {
            devices: Vec::new(),
            total,
            offset: 0,
            limit: 50,
            summary: Default::default(),
        }
    }

    #[test]
    fn computed_once_per_generation_query_and_viewer() {
        let pages = Pages::default();
        let query = DeviceQuery::default();
        let mut computed = 0;
        for _ in 0..3 {
            pages.get(&query, "*", 1, || {
                computed += 1;
                page(1)
            });
        }
        assert_eq!(computed, 1);
        let other = pages.get(&query, "site-a", 1, || page(2));
        assert_eq!(other.total, 2);
        let later = pages.get(&query, "*", 2, || page(3));
        assert_eq!(later.total, 3);
        let filtered = DeviceQuery {
            offset: 50,
            ..DeviceQuery::default()
        };
        assert_eq!(pages.get(&filtered, "*", 2, || page(4)).total, 4);
    }
}
