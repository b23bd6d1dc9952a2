"""The giftd process: settings, embedded servers, app, gateway, codec, auth, CLI."""
