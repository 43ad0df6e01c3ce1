pub mod app;
pub mod auth;
pub mod config;
pub mod gateway;
pub mod pb;
pub mod schema;
pub mod service;
pub mod store;
