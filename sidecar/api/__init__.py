"""The request API over MQTT: the protocol (wire types of requests and answers), the
handlers, replay streams."""
