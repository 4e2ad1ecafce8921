//! TEMPORARY STUB (replaced by the store branch).
#![allow(missing_docs, clippy::unused_async)]
use std::future::Future;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store data corrupt: {0}")]
    Corrupt(String),
}

pub trait SessionStore: Send + Sync {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    fn put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn take(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn incr(
        &self,
        key: &str,
        window: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[derive(Clone, Debug)]
pub struct Embedded;
impl Embedded {
    pub fn open(_dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self)
    }
}
#[derive(Clone, Debug)]
pub struct Redis;
impl Redis {
    pub async fn connect(_url: &str, _ca: Option<&std::path::Path>) -> Result<Self, StoreError> {
        Ok(Self)
    }
}
#[derive(Clone, Debug)]
pub enum Store {
    Embedded(Embedded),
    Redis(Redis),
}
impl Store {
    pub fn kind(&self) -> &'static str {
        "stub"
    }
}
impl SessionStore for Store {
    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    async fn put(
        &self,
        _key: &str,
        _value: &[u8],
        _ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn put_new(
        &self,
        _key: &str,
        _value: &[u8],
        _ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn take(&self, _key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    async fn delete(&self, _key: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn incr(&self, _key: &str, _window: Duration) -> Result<u64, StoreError> {
        Ok(1)
    }
    async fn keys(&self, _prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(vec![])
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
