//! Private redis brokers for restart cases (to be written with the redis adapter).
