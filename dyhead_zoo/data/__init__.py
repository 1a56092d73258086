"""Images and data: decoding, preprocessing, COCO-format sets, category names."""
