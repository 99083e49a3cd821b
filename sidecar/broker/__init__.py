"""The MQTT transport: the subscriber and the paho subclass. The only daemon package that
imports paho; it hands messages to callbacks and offers ``ack``/``publish``."""
