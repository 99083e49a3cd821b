"""Shared basics every layer may use: event rows, ids and clocks, filters, codecs and
their error wording, MQTT topic matching, units, counters. Imports nothing above itself."""
