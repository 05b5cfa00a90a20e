//! Private amqp brokers for restart cases (to be written with the amqp adapter).
