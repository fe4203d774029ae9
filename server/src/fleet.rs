//! The fleet as the UI's server functions see it ([`app::fleet::Fleet`]): the same
//! operations and the same errors as the JSON API, with ids parsed here, at the edge.

use std::pin::Pin;

use app::fleet::Fleet;
use protocol::{
    CommandId,
    api::{ApiError, CommandView, DeviceView, History, HistoryQuery, SendCommand},
};

use crate::{
    error::{Failure, parse_device_id},
    history,
    state::AppState,
};

type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

impl Fleet for AppState {
    fn devices(&self) -> Vec<DeviceView> {
        self.hub.devices()
    }

    fn device(&self, id: &str) -> Option<DeviceView> {
        parse_device_id(id).ok().and_then(|id| self.hub.device(&id))
    }

    fn recent_commands(&self, device: Option<&str>, limit: usize) -> Vec<CommandView> {
        match device.map(parse_device_id) {
            None => self.hub.recent_commands(None, limit),
            Some(Ok(id)) => self.hub.recent_commands(Some(&id), limit),
            Some(Err(_)) => Vec::new(),
        }
    }

    fn send_command(&self, device: String, request: SendCommand) -> Answer<'_, CommandView> {
        Box::pin(async move {
            let device = parse_device_id(&device).map_err(Failure::into_api_error)?;
            self.hub
                .send(&device, request)
                .await
                .map_err(|e| Failure::from(e).into_api_error())
        })
    }

    fn history(&self, device: String, query: HistoryQuery) -> Answer<'_, History> {
        Box::pin(async move {
            let device = parse_device_id(&device).map_err(Failure::into_api_error)?;
            history::read(&self.hub, self.store.as_ref(), &device, query)
                .await
                .map_err(|e| Failure::from(e).into_api_error())
        })
    }

    fn cancel_command(&self, id: String) -> Answer<'_, CommandView> {
        Box::pin(async move {
            self.hub
                .cancel(&CommandId(id))
                .await
                .map_err(|e| Failure::from(e).into_api_error())
        })
    }
}
