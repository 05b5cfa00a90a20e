//! Private mqtt brokers for restart cases (to be written with the mqtt adapter).
