"""Analytics: sales per day and SKU (units, revenue), orders shipped and cancelled per day."""
